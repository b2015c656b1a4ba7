//! Bad input at scale: property tests (proptest) that throw malformed,
//! hostile and oversized input at ingest, over HTTP and over the
//! `herald.ingest` exchange, and check that every answer is a clear problem
//! (never a 500), every bad message a dead letter with its reason, and that
//! the service is still up and serving afterwards.
//!
//! Cases per property: the default of each test, or `PROPTEST_CASES` for a
//! longer run (docs/reliability-fuzz.md).

mod amqp;
mod http;
mod raw;
mod regressions;

use std::future::Future;

use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use serde_json::{Map, Value, json};

/// Cases of a property: `PROPTEST_CASES` when set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `check` on `cases` values of `strategy`, each an async check run to
/// completion on the test's runtime (which must be multi-threaded), and
/// shrinks a failure to a small case before failing the test with it.
pub fn check_all<S, F, Fut>(name: &str, default_cases: u32, strategy: S, check: F)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
    F: Fn(S::Value) -> Fut,
    Fut: Future<Output = Result<(), TestCaseError>>,
{
    let handle = tokio::runtime::Handle::current();
    let cases = cases(default_cases);
    let mut runner = TestRunner::new(Config {
        cases,
        // Each shrink step is a request: bounded, so a failure is reported
        // in seconds, still shrunk far enough to read.
        max_shrink_iters: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let result = tokio::task::block_in_place(|| {
        runner.run(&strategy, |value| handle.block_on(check(value)))
    });
    if let Err(e) = result {
        panic!("property `{name}` failed: {e}");
    }
    eprintln!("property `{name}`: {cases} cases passed");
}

/// Strings a client might send by mistake or on purpose: ids, any Unicode,
/// NUL and other control characters, template syntax, markup, long runs.
pub fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9._:@+-]{0,24}",
        4 => any::<String>(),
        2 => "[a-z]{0,4}[\\x00-\\x1f\\x7f][a-z]{0,4}",
        1 => "\\{\\{ ?[a-z.]{0,6} ?\\}?\\}?",
        1 => Just("<script>x()</script>".to_owned()),
        1 => Just("..".to_owned()),
        1 => "[\\x{80}-\\x{10ffff}]{1,16}",
        1 => (1usize..70_000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Any JSON value, nested a few levels, with hostile strings and keys.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(hostile_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A valid notification for user `u-1` on every channel.
pub fn valid_notification() -> Value {
    json!({
        "category": "order.shipped",
        "to": {"users": ["u-1"]},
        "priority": "normal",
        "content": {
            "push": {"title": "Shipped", "body": "Order {{order_id}}", "data": {"order_id": "{{order_id}}"}},
            "email": {"subject": "Shipped", "text": "Hi {{name}}", "html": "<p>Hi {{name}}</p>"},
            "sms": {"text": "Order {{order_id}} shipped"}
        },
        "data": {"order_id": "A-991"}
    })
}

/// A valid notification whose free text (data, bodies, subject) is hostile:
/// where NUL, markup and odd Unicode get furthest, into the database.
pub fn free_text_notification() -> impl Strategy<Value = Value> {
    (
        hostile_string(),
        hostile_string(),
        hostile_string(),
        hostile_string(),
    )
        .prop_map(|(data, subject, text, html)| {
            let mut n = valid_notification();
            n["data"]["order_id"] = json!(data);
            n["data"][data.clone()] = json!(data);
            n["content"]["email"]["subject"] = json!(subject);
            n["content"]["email"]["text"] = json!(text);
            n["content"]["email"]["html"] = json!(html);
            n["content"]["sms"]["text"] = json!(text);
            n
        })
}

/// Sets the value at a `/`-separated path, creating objects on the way.
fn set_path(root: &mut Value, path: &str, value: Value) {
    let mut node = root;
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        if !node.get(*part).is_some_and(Value::is_object) {
            node[*part] = json!({});
        }
        node = &mut node[*part];
    }
    node[parts[parts.len() - 1]] = value;
}

/// A valid notification with some fields replaced by arbitrary values,
/// which is what most client bugs look like.
pub fn mutated_notification() -> impl Strategy<Value = Value> {
    const FIELDS: [&str; 20] = [
        "category",
        "to",
        "to/users",
        "to/topic",
        "priority",
        "channels",
        "content",
        "content/push",
        "content/push/title",
        "content/push/data",
        "content/email",
        "content/email/subject",
        "content/email/html",
        "content/sms/text",
        "data",
        "data/order_id",
        "send_at",
        "expires_at",
        "unknown",
        "content/email/unknown",
    ];
    prop::collection::vec((0..FIELDS.len(), json_value()), 1..4).prop_map(|changes| {
        let mut n = valid_notification();
        for (field, value) in changes {
            set_path(&mut n, FIELDS[field], value);
        }
        n
    })
}

/// A JSON body as bytes: mostly serialised values, sometimes bytes that are
/// not JSON at all (truncated, invalid UTF-8, nested past any parser's
/// limit), sometimes over the body limit.
pub fn body_bytes(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => value.prop_map(|v| serde_json::to_vec(&v).expect("serialisable")),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (1usize..400).prop_map(|depth| {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }),
        1 => Just(b"{\"category\": \"x\xff\xfe\", \"to\": {\"users\": [\"u-1\"]}}".to_vec()),
        1 => Just(b"{\"category\": \"order.shipped\", \"to\": ".to_vec()),
        1 => (0usize..2).prop_map(|kind| {
            // Over 1 MiB: valid JSON padded with whitespace, or one huge string.
            let mut body = serde_json::to_vec(&valid_notification()).expect("json");
            if kind == 0 {
                body.splice(1..1, std::iter::repeat_n(b' ', 1_100_000));
            } else {
                body = serde_json::to_vec(&json!({"data": {"blob": "y".repeat(1_100_000)}}))
                    .expect("json");
            }
            body
        }),
    ]
}

/// Fails the case with `message` unless `ok`.
pub fn ensure(ok: bool, message: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(message()))
    }
}

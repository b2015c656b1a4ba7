//! A real headless Chromium driven over WebDriver (chromedriver), for the
//! admin page's tests. Plain WebDriver JSON over HTTP: no client library,
//! nothing to download at test time (`scripts/install-test-tools` installs
//! Debian's `chromium` and `chromium-driver`).
//!
//! chromedriver runs in its own process group with Chromium beneath it; the
//! whole group is killed when the [`Browser`] is dropped, pass or fail.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::Engine as _;
use serde_json::{Value, json};

/// Key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long to wait for an element to appear after a navigation.
const WAIT: Duration = Duration::from_secs(15);

/// A browser session. Dropping it ends chromedriver and Chromium.
pub struct Browser {
    http: reqwest::Client,
    driver: String,
    session: String,
    child: Child,
    profile: PathBuf,
}

/// An element found on the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

impl Browser {
    /// Starts chromedriver and opens a headless Chromium session.
    pub async fn start() -> Self {
        let chromedriver =
            which("chromedriver").expect("chromedriver is missing: run scripts/install-test-tools");
        let chromium = ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|n| which(n))
            .expect("chromium is missing: run scripts/install-test-tools");
        let port = free_port();
        let profile =
            std::env::temp_dir().join(format!("herald-chromium-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so Chromium and its helpers can be
            // killed together with it.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let mut browser = Self {
            http: reqwest::Client::new(),
            driver: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            child,
            profile,
        };
        browser.wait_for_driver().await;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--window-size=1360,1000",
                    format!("--user-data-dir={}", browser.profile.display()),
                ]
            }
        }}});
        let created = browser
            .call(reqwest::Method::POST, "/session", Some(caps))
            .await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        browser
    }

    async fn wait_for_driver(&self) {
        for _ in 0..100 {
            if let Ok(r) = self
                .http
                .get(format!("{}/status", self.driver))
                .send()
                .await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start");
    }

    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.driver);
        let mut req = self.http.request(method, &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let v: Value = resp.json().await.map_err(|e| format!("{url}: {e}"))?;
        if status.is_success() {
            Ok(v["value"].clone())
        } else {
            Err(format!("{path}: {status} {}", v["value"]["message"]))
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.call(
            reqwest::Method::POST,
            &self.at("/url"),
            Some(json!({"url": url})),
        )
        .await;
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, &self.at("/url"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page title.
    pub async fn title(&self) -> String {
        self.call(reqwest::Method::GET, &self.at("/title"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element matching the CSS selector, waiting for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let resp = self
                .http
                .post(format!("{}{}", self.driver, self.at("/element")))
                .json(&json!({"using": "css selector", "value": css}))
                .send()
                .await
                .expect("find");
            let ok = resp.status().is_success();
            let v: Value = resp.json().await.expect("json");
            if ok && let Some(id) = v["value"][ELEMENT].as_str() {
                return Element(id.to_owned());
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no element `{css}` on {} ({})",
                    self.url().await,
                    v["value"]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks an element.
    pub async fn click(&self, el: &Element) {
        self.call(
            reqwest::Method::POST,
            &self.at(&format!("/element/{}/click", el.0)),
            Some(json!({})),
        )
        .await;
    }

    /// Types into an input, replacing what it held.
    pub async fn fill(&self, el: &Element, text: &str) {
        let path = self.at(&format!("/element/{}", el.0));
        self.call(
            reqwest::Method::POST,
            &format!("{path}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("{path}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// The visible text of an element.
    pub async fn text(&self, el: &Element) -> String {
        self.call(
            reqwest::Method::GET,
            &self.at(&format!("/element/{}/text", el.0)),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// The visible text of the first element matching `css`. Retries while
    /// a navigation replaces the page under it (a stale element).
    pub async fn text_of(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let el = self.find(css).await;
            let path = self.at(&format!("/element/{}/text", el.0));
            match self.try_call(reqwest::Method::GET, &path, None).await {
                Ok(v) => return v.as_str().unwrap_or_default().to_owned(),
                Err(e) if tokio::time::Instant::now() > deadline => panic!("{e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Clicks what `css` finds and waits until the browser has left
    /// `from` (a form submission or link that navigates).
    pub async fn click_to_leave(&self, css: &str) {
        let from = self.url().await;
        let el = self.find(css).await;
        self.click(&el).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.url().await == from {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still on {from} after clicking {css}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG screenshot of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let b64 = self
            .call(reqwest::Method::GET, &self.at("/screenshot"), None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 string"))
            .expect("valid base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("artifact dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Ends the session (closing Chromium) before the process group is killed.
    pub async fn quit(mut self) {
        if !self.session.is_empty() {
            let path = self.at("");
            let _ = self
                .http
                .delete(format!("{}{path}", self.driver))
                .send()
                .await;
            self.session.clear();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver, Chromium and its helper processes.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Where tests leave screenshots: `target/test-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/<test binary>
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("test-artifacts")
}

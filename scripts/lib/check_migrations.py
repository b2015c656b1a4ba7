"""Checks that migrations keep zero-downtime deploys possible (docs/deploy.md,
"Zero-downtime schema changes").

Usage: check_migrations.py [--repo DIR] [--base REF]

1. Forward-only.
   - Names are `<14-digit timestamp>_<snake_case>.sql`, versions unique; no
     down (or `.up.sql`/`.down.sql` reversible) migrations.
   - A migration that exists at the base (REF, by default the merge-base of
     HEAD and main) is byte-identical in the working tree, and is not
     deleted or renamed.
   - No commit in the base's history changed, deleted or renamed a
     migration after it was added, except the ones in ALLOWED_EDITS (each
     with its reason).
   - A migration that is new since the base sorts after every migration of
     the base (sqlx would otherwise apply it out of order, or refuse).
2. Expand, then contract. A destructive change -- DROP TABLE, DROP COLUMN,
   RENAME (a table or a column), ALTER COLUMN ... TYPE, SET NOT NULL, or
   ADD COLUMN ... NOT NULL without a DEFAULT -- breaks the release still
   serving while the migration runs. It is accepted only in a migration
   that carries, for each object it touches, a marker comment
       -- contract: <table or table.column> unused since <version or release>
   naming the earlier migration (its 14-digit version, which must exist and
   be older) or the release (`release X.Y.Z`) from which no code uses the
   object any more; or where DESTRUCTIVE_ALLOWED says why it is safe.
"""

import argparse
import os
import re
import subprocess
import sys

NAME = re.compile(r"^(\d{14})_[a-z0-9_]+\.sql$")

# Edits made to migrations before Herald had a release that anyone ran, in
# the commits that wrote them (the migration and its fix landed together on
# the development line). From the first release on, this list does not grow.
ALLOWED_EDITS = {
    ("20261122000001_init.sql", "b4d6900"): "router work extended the initial schema before any release",
    ("20261122000002_delivery_batches.sql", "da04a86"): "domains replaced CHECKs in the same pre-release week",
    ("20261201000200_suppressions.sql", "e03b4f3"): "edited on the events branch before it was merged",
    ("20261201000201_receipts.sql", "e03b4f3"): "edited on the events branch before it was merged",
}

# Destructive statements in landed migrations that are safe, and why.
DESTRUCTIVE_ALLOWED = {
    ("20261122000002_delivery_batches.sql", "channel"): "text to a domain over text: binary-coercible, no rewrite, same values",
    ("20261122000002_delivery_batches.sql", "lane"): "text to a domain over text: binary-coercible, no rewrite, same values",
    ("20261122000002_delivery_batches.sql", "status"): "text to a domain over text: binary-coercible, no rewrite, same values",
}

IDENT = r'(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)(?:\.(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*))?'
DESTRUCTIVE = [
    ("DROP TABLE", re.compile(r"\bDROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(" + IDENT + ")", re.I)),
    ("DROP COLUMN", re.compile(r"\bDROP\s+COLUMN\s+(?:IF\s+EXISTS\s+)?(" + IDENT + ")", re.I)),
    ("RENAME COLUMN", re.compile(r"\bRENAME\s+COLUMN\s+(" + IDENT + r")\s+TO\b", re.I)),
    ("RENAME TABLE", re.compile(r"\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(" + IDENT + r")\s+RENAME\s+TO\b", re.I)),
    ("RENAME", re.compile(r"\bRENAME\s+(?!COLUMN\b|TO\b|CONSTRAINT\b)(" + IDENT + r")\s+TO\b", re.I)),
    ("ALTER COLUMN TYPE", re.compile(r"\bALTER\s+(?:COLUMN\s+)?(" + IDENT + r")\s+(?:SET\s+DATA\s+)?TYPE\b", re.I)),
    ("SET NOT NULL", re.compile(r"\bALTER\s+(?:COLUMN\s+)?(" + IDENT + r")\s+SET\s+NOT\s+NULL\b", re.I)),
]
ADD_COLUMN = re.compile(r"\bADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(" + IDENT + r")([^,;]*)", re.I)
MARKER = re.compile(r"--\s*contract:\s*(\S+)\s+unused\s+since\s+(release\s+\S+|\d{14})", re.I)


def git(repo, *args, check=True):
    r = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {r.stderr.strip()}")
    return r


def strip_sql(text):
    """The SQL without comments and single-quoted strings (a DROP inside a
    format() string is built at run time, not by the migration)."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif text[i] == "'":
            j = i + 1
            while j < n:
                if text[j] == "'" and text.startswith("''", j):
                    j += 2
                elif text[j] == "'":
                    break
                else:
                    j += 1
            out.append("''")
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def unquote(name):
    return name.replace('"', "").lower()


def destructive_changes(text):
    """(kind, object) for every destructive statement in the SQL text."""
    sql = strip_sql(text)
    found = []
    for kind, rx in DESTRUCTIVE:
        for m in rx.finditer(sql):
            obj = unquote(m.group(1))
            if kind == "RENAME" and any(k in ("RENAME COLUMN", "RENAME TABLE") for k, o in found if o == obj):
                continue
            if kind == "ALTER COLUMN TYPE" and obj in ("table", "domain", "sequence", "index", "view"):
                continue
            found.append((kind, obj))
    for m in ADD_COLUMN.finditer(sql):
        rest = m.group(2)
        if re.search(r"\bNOT\s+NULL\b", rest, re.I) and not re.search(r"\bDEFAULT\b", rest, re.I) \
                and not re.search(r"\bGENERATED\b", rest, re.I):
            found.append(("ADD COLUMN NOT NULL without DEFAULT", unquote(m.group(1))))
    return found


def check(repo, base, migrations_dir="migrations"):
    problems = []
    mdir = os.path.join(repo, migrations_dir)
    files = sorted(f for f in os.listdir(mdir) if not f.startswith("."))
    versions = {}
    for f in files:
        m = NAME.match(f)
        if not m:
            problems.append(f"{f}: name must be <14-digit timestamp>_<snake_case>.sql "
                            "(forward-only: no .up.sql/.down.sql, no down migrations)")
            continue
        if "down" in f.split("_", 1)[1].split(".")[0].split("_"):
            problems.append(f"{f}: looks like a down migration; migrations are forward-only")
        if m.group(1) in versions:
            problems.append(f"{f}: version {m.group(1)} already used by {versions[m.group(1)]}")
        versions[m.group(1)] = f

    # Landed migrations are byte-identical to the base, and still there.
    base_files = {}
    if base:
        ls = git(repo, "ls-tree", "--name-only", f"{base}:{migrations_dir}", check=False)
        if ls.returncode == 0:
            for f in ls.stdout.split():
                blob = git(repo, "show", f"{base}:{migrations_dir}/{f}").stdout
                base_files[f] = blob
        for f, blob in base_files.items():
            path = os.path.join(mdir, f)
            if not os.path.exists(path):
                problems.append(f"{f}: landed at {base} and is gone (deleted or renamed); "
                                "write a new migration instead")
                continue
            with open(path, newline="") as fh:
                if fh.read() != blob:
                    problems.append(f"{f}: landed at {base} and has changed since; landed migrations "
                                    "never change: write a new migration instead")
        base_versions = [NAME.match(f).group(1) for f in base_files if NAME.match(f)]
        newest = max(base_versions, default="")
        for f in files:
            m = NAME.match(f)
            if m and f not in base_files and m.group(1) <= newest:
                problems.append(f"{f}: new since {base} but sorts before {newest}, the newest "
                                "landed migration: give it a later timestamp")

    # No commit in the base's history edited, deleted or renamed a migration
    # (commits since the base are covered by the comparison above, so a
    # branch may still fix its own new migration before it lands).
    log = git(repo, "log", "--format=@%h", "--name-status", "--diff-filter=MDR", "--no-renames",
              base or "HEAD", "--", migrations_dir, check=False)
    commit = None
    for line in log.stdout.splitlines():
        if line.startswith("@"):
            commit = line[1:]
        elif line.strip():
            status, path = line.split("\t", 1)
            f = os.path.basename(path)
            if any(f == af and (commit.startswith(ac) or ac.startswith(commit)) for af, ac in ALLOWED_EDITS):
                continue
            verb = {"M": "changed", "D": "deleted"}.get(status[0], "renamed")
            problems.append(f"{f}: {verb} after it landed, in commit {commit}; "
                            "landed migrations never change: write a new migration instead")

    # Destructive changes only as the contract step, with a marker.
    for f in files:
        m = NAME.match(f)
        if not m:
            continue
        with open(os.path.join(mdir, f)) as fh:
            text = fh.read()
        markers = {}
        for mk in MARKER.finditer(text):
            markers[unquote(mk.group(1))] = mk.group(2)
        for kind, obj in destructive_changes(text):
            if (f, obj) in DESTRUCTIVE_ALLOWED or (f, obj.split(".")[-1]) in DESTRUCTIVE_ALLOWED:
                continue
            since = markers.get(obj)
            if since is None:
                since = next((v for k, v in markers.items() if k.split(".")[-1] == obj.split(".")[-1]), None)
            if since is None:
                problems.append(f"{f}: {kind} {obj} breaks the release still serving; do it in a "
                                "later contract migration that says so: "
                                f"`-- contract: {obj} unused since <migration version or release X.Y.Z>`")
                continue
            if since[0].isdigit():
                if since not in versions:
                    problems.append(f"{f}: contract marker for {obj} names migration {since}, which does not exist")
                elif since >= m.group(1):
                    problems.append(f"{f}: contract marker for {obj} names migration {since}, which is not "
                                    "older than this one")
    return problems


def default_base(repo):
    for ref in ("origin/main", "main"):
        if git(repo, "rev-parse", "--verify", "-q", ref, check=False).returncode == 0:
            mb = git(repo, "merge-base", "HEAD", ref, check=False)
            if mb.returncode == 0:
                return mb.stdout.strip()
    return "HEAD"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=".")
    ap.add_argument("--base", default=None)
    ap.add_argument("--dir", default="migrations")
    args = ap.parse_args()
    if git(args.repo, "rev-parse", "--is-shallow-repository", check=False).stdout.strip() == "true":
        print("check-migrations: shallow clone: the history check sees only the fetched commits", file=sys.stderr)
    base = args.base or default_base(args.repo)
    problems = check(args.repo, base, args.dir)
    for p in problems:
        print(f"check-migrations: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    n = len([f for f in os.listdir(os.path.join(args.repo, args.dir)) if NAME.match(f)])
    print(f"check-migrations: {n} migrations forward-only and expand/contract-safe (base {base[:12]})")


if __name__ == "__main__":
    main()

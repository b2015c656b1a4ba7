"""Self-test of check_migrations.py: each bad example must be refused and
each good one accepted, in a scratch git repository. Run by
scripts/check-deploy; prints `N passed, N failed`."""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_migrations  # noqa: E402

LANDED = {
    "20260101000001_init.sql": "CREATE TABLE users (id text PRIMARY KEY, legacy_name text);\n",
    "20260101000002_devices.sql": "CREATE TABLE devices (token text PRIMARY KEY);\n",
}


def git(repo, *args):
    subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True)


def scenario(change):
    """A repository whose `main` holds LANDED; `change` edits the working
    tree (and may commit). Returns the problems found."""
    with tempfile.TemporaryDirectory() as repo:
        git(repo, "init", "-q", "-b", "main")
        git(repo, "config", "user.email", "ci@example.com")
        git(repo, "config", "user.name", "ci")
        os.mkdir(os.path.join(repo, "migrations"))
        for name, sql in LANDED.items():
            with open(os.path.join(repo, "migrations", name), "w") as f:
                f.write(sql)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "landed")
        git(repo, "checkout", "-qb", "feature")
        change(repo)
        base = check_migrations.default_base(repo)
        return check_migrations.check(repo, base)


def write(repo, name, sql):
    with open(os.path.join(repo, "migrations", name), "w") as f:
        f.write(sql)


def commit(repo, msg="change"):
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", msg)


def edit_landed(repo):
    write(repo, "20260101000002_devices.sql", "CREATE TABLE devices (token text PRIMARY KEY, platform text);\n")


def edit_landed_committed_on_main(repo):
    git(repo, "checkout", "-q", "main")
    edit_landed(repo)
    commit(repo)
    git(repo, "branch", "-qf", "feature")
    git(repo, "checkout", "-q", "feature")


def delete_landed(repo):
    os.remove(os.path.join(repo, "migrations", "20260101000002_devices.sql"))


def down_migration(repo):
    write(repo, "20260201000001_platform.down.sql", "ALTER TABLE devices DROP COLUMN platform;\n")


def out_of_order(repo):
    write(repo, "20260101000000_early.sql", "CREATE TABLE early (id int);\n")


def drop_column_unmarked(repo):
    write(repo, "20260201000001_drop_legacy.sql", "ALTER TABLE users DROP COLUMN legacy_name;\n")


def rename_column(repo):
    write(repo, "20260201000001_rename.sql", "ALTER TABLE users RENAME COLUMN legacy_name TO display_name;\n")


def alter_type(repo):
    write(repo, "20260201000001_type.sql", "ALTER TABLE users ALTER COLUMN legacy_name TYPE varchar(40);\n")


def set_not_null(repo):
    write(repo, "20260201000001_nn.sql", "ALTER TABLE users ALTER COLUMN legacy_name SET NOT NULL;\n")


def add_not_null_without_default(repo):
    write(repo, "20260201000001_add.sql", "ALTER TABLE users ADD COLUMN locale text NOT NULL;\n")


def drop_table_unmarked(repo):
    write(repo, "20260201000001_drop.sql", "DROP TABLE IF EXISTS devices;\n")


def marker_names_missing_migration(repo):
    write(repo, "20260201000001_drop_legacy.sql",
          "-- contract: users.legacy_name unused since 20251231000000\n"
          "ALTER TABLE users DROP COLUMN legacy_name;\n")


def marker_names_itself(repo):
    write(repo, "20260201000001_drop_legacy.sql",
          "-- contract: users.legacy_name unused since 20260201000001\n"
          "ALTER TABLE users DROP COLUMN legacy_name;\n")


# Accepted:
def additive(repo):
    write(repo, "20260201000001_platform.sql",
          "ALTER TABLE devices ADD COLUMN platform text;\n"
          "ALTER TABLE users ADD COLUMN locale text NOT NULL DEFAULT 'en';\n"
          "-- a comment that says DROP TABLE users is not a statement\n"
          "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN\n"
          "  EXECUTE format('DROP TABLE %I', 'x'); END $$;\n")


def contract_with_marker(repo):
    write(repo, "20260201000001_drop_legacy.sql",
          "-- contract: users.legacy_name unused since 20260101000002\n"
          "ALTER TABLE users DROP COLUMN legacy_name;\n")


def contract_since_release(repo):
    write(repo, "20260201000001_drop_devices.sql",
          "-- contract: devices unused since release 0.4.0\nDROP TABLE devices;\n")


def fix_own_new_migration(repo):
    write(repo, "20260201000001_platform.sql", "ALTER TABLE devices ADD COLUMN platfrom text;\n")
    commit(repo)
    write(repo, "20260201000001_platform.sql", "ALTER TABLE devices ADD COLUMN platform text;\n")
    commit(repo)


CASES = [
    (edit_landed, "has changed since"),
    (edit_landed_committed_on_main, "changed after it landed"),
    (delete_landed, "is gone"),
    (down_migration, "forward-only"),
    (out_of_order, "sorts before"),
    (drop_column_unmarked, "DROP COLUMN legacy_name"),
    (rename_column, "RENAME COLUMN legacy_name"),
    (alter_type, "ALTER COLUMN TYPE legacy_name"),
    (set_not_null, "SET NOT NULL legacy_name"),
    (add_not_null_without_default, "ADD COLUMN NOT NULL without DEFAULT locale"),
    (drop_table_unmarked, "DROP TABLE devices"),
    (marker_names_missing_migration, "does not exist"),
    (marker_names_itself, "not older"),
    (additive, None),
    (contract_with_marker, None),
    (contract_since_release, None),
    (fix_own_new_migration, None),
]


def main():
    passed = failed = 0
    for change, expect in CASES:
        problems = scenario(change)
        if expect is None:
            ok = not problems
        else:
            ok = any(expect in p for p in problems)
        if ok:
            passed += 1
        else:
            failed += 1
            want = "no problem" if expect is None else f"a problem containing {expect!r}"
            print(f"check-migrations self-test: {change.__name__}: expected {want}, got {problems}",
                  file=sys.stderr)
    print(f"check-migrations self-test: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

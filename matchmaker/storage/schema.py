"""The SQLite schema of the matchmaker, as an ordered list of migrations.

The database records `PRAGMA user_version`: migration N brings a database from version N-1 to
N. Add a migration at the end to change the schema; never edit one that has shipped, because
databases in the field have already applied it.

Task ids are arithmetic: a dataset reserves a block of `jobs * tasks_per_job` ids at submit time
and task (job j, task t) has id `task_id_base + j * tasks_per_job + t`, so tasks can be
materialized incrementally and still be addressed before their rows exist.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the initial schema.
    """
    CREATE TABLE users (
        user_id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
        share REAL NOT NULL DEFAULT 1.0 CHECK (share > 0),
        created REAL NOT NULL
    );
    CREATE TABLE sites (
        site_id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created REAL NOT NULL
    );
    CREATE TABLE tokens (
        token_hash TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('user', 'site', 'pilot')),
        user_id INTEGER REFERENCES users(user_id),
        site_id INTEGER REFERENCES sites(site_id),
        created REAL NOT NULL,
        expires REAL,
        revoked REAL
    );
    CREATE INDEX tokens_expiry ON tokens(kind, expires);
    CREATE TABLE datasets (
        dataset_id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(user_id),
        description TEXT NOT NULL,
        config TEXT NOT NULL,
        jobs INTEGER NOT NULL,
        tasks_per_job INTEGER NOT NULL,
        task_id_base INTEGER NOT NULL,
        jobs_materialized INTEGER NOT NULL DEFAULT 0,
        priority REAL NOT NULL,
        status TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE jobs (
        dataset_id INTEGER NOT NULL,
        job_index INTEGER NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (dataset_id, job_index)
    ) WITHOUT ROWID;
    CREATE INDEX jobs_state ON jobs(dataset_id, state, job_index);
    CREATE TABLE tasks (
        task_id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL,
        job_index INTEGER NOT NULL,
        task_index INTEGER NOT NULL,
        state TEXT NOT NULL,
        failures INTEGER NOT NULL DEFAULT 0,
        lost INTEGER NOT NULL DEFAULT 0,
        requirements TEXT,
        reason TEXT,
        updated REAL NOT NULL
    );
    CREATE INDEX tasks_dataset_state ON tasks(dataset_id, state, task_id);
    CREATE TABLE pilots (
        pilot_id INTEGER PRIMARY KEY,
        site_id INTEGER NOT NULL REFERENCES sites(site_id),
        host TEXT NOT NULL,
        batch_system TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        resources TEXT NOT NULL,
        state TEXT NOT NULL,
        registered REAL NOT NULL,
        last_seen REAL NOT NULL,
        ended REAL,
        exit_reason TEXT,
        suspect INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX pilots_site_state ON pilots(site_id, state);
    CREATE TABLE attempts (
        attempt_id INTEGER PRIMARY KEY,
        task_id INTEGER NOT NULL,
        dataset_id INTEGER NOT NULL,
        pilot_id INTEGER,
        site TEXT NOT NULL,
        host TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        passkey_hash TEXT NOT NULL,
        state TEXT NOT NULL,
        started REAL NOT NULL,
        last_heartbeat REAL NOT NULL,
        ended REAL,
        req_cpus INTEGER NOT NULL,
        req_memory INTEGER NOT NULL,
        req_disk INTEGER NOT NULL,
        req_gpus INTEGER NOT NULL,
        req_walltime INTEGER NOT NULL,
        gpus TEXT,
        cpu_time REAL,
        wall_time REAL,
        peak_memory INTEGER,
        peak_disk INTEGER,
        peak_gpu_memory INTEGER,
        gpu_time REAL,
        exit_code INTEGER,
        error_class TEXT,
        error_message TEXT,
        statistics TEXT,
        outputs TEXT,
        stdout_tail TEXT,
        stderr_tail TEXT
    );
    CREATE INDEX attempts_task ON attempts(task_id);
    CREATE INDEX attempts_dataset ON attempts(dataset_id, attempt_id);
    CREATE INDEX attempts_pilot ON attempts(pilot_id);
    CREATE INDEX attempts_ended ON attempts(ended);
    CREATE TABLE logs (
        attempt_id INTEGER NOT NULL,
        stream TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),
        text TEXT NOT NULL,
        PRIMARY KEY (attempt_id, stream)
    ) WITHOUT ROWID;
    CREATE TABLE statistics (
        dataset_id INTEGER NOT NULL,
        task_index INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('user', 'resource')),
        name TEXT NOT NULL,
        count INTEGER NOT NULL,
        sum REAL NOT NULL,
        mean REAL NOT NULL,
        m2 REAL NOT NULL,
        min REAL NOT NULL,
        max REAL NOT NULL,
        PRIMARY KEY (dataset_id, task_index, kind, name)
    ) WITHOUT ROWID;
    CREATE TABLE usage (
        entity TEXT PRIMARY KEY,
        value REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE events (
        event_id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        dataset_id INTEGER,
        user_id INTEGER,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX events_dataset ON events(dataset_id, event_id);
    """,
    # 2: a site's pilots by batch id, for the factories asking which of theirs registered.
    """
    CREATE INDEX pilots_site_batch ON pilots(site_id, batch_id);
    """,
    # 3: a pilot token registers one pilot (`used`, and `pilot_id` once it has); the pilot then
    # speaks with a key of its own ('pilot-key', for `pilot_id` alone). The kind's CHECK
    # changes, so the table is made anew.
    """
    CREATE TABLE tokens_new (
        token_hash TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('user', 'site', 'pilot', 'pilot-key')),
        user_id INTEGER REFERENCES users(user_id),
        site_id INTEGER REFERENCES sites(site_id),
        pilot_id INTEGER,
        created REAL NOT NULL,
        expires REAL,
        revoked REAL,
        used REAL
    );
    INSERT INTO tokens_new (token_hash, kind, user_id, site_id, created, expires, revoked)
        SELECT token_hash, kind, user_id, site_id, created, expires, revoked FROM tokens;
    DROP TABLE tokens;
    ALTER TABLE tokens_new RENAME TO tokens;
    CREATE INDEX tokens_expiry ON tokens(kind, expires);
    """,
    # 4: a site's pilot tokens that have registered no pilot yet: each is a pilot its factory
    # may have queued, the most that the factory's demand request may say it has queued.
    """
    CREATE INDEX tokens_unused ON tokens(site_id, expires) WHERE kind = 'pilot' AND used IS NULL;
    """,
    # 5: what a report left out and why (a statistic that was not a number...): a JSON list.
    """
    ALTER TABLE attempts ADD COLUMN warnings TEXT;
    """,
    # 6: datasets change after submission and leave the hot database. A steering change makes
    # a new config version for the jobs created from `first_job` on (version 1 is the
    # submitted config), and each attempt records the version it ran (NULL: 1). A dataset
    # archived or deleted keeps a row here: where its attempts went, and the highest attempt id
    # it had, so that ids are never given out twice; `purged` is set once its rows are gone.
    """
    ALTER TABLE attempts ADD COLUMN config_version INTEGER;
    CREATE TABLE steering_versions (
        dataset_id INTEGER NOT NULL,
        version INTEGER NOT NULL,
        first_job INTEGER NOT NULL,
        steering TEXT NOT NULL,
        user_id INTEGER,
        created REAL NOT NULL,
        PRIMARY KEY (dataset_id, version)
    ) WITHOUT ROWID;
    CREATE TABLE retired (
        dataset_id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('archived', 'deleted')),
        time REAL NOT NULL,
        user_id INTEGER,
        attempts INTEGER NOT NULL,
        first_attempt INTEGER,
        last_attempt INTEGER,
        path TEXT,
        bytes INTEGER,
        purged REAL
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

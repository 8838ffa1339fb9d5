"""The matchmaker: the central server that production managers submit to and pilots pull from.

It keeps datasets, jobs, task DAGs and every attempt in SQLite, holds the ready queue in memory,
decides fair share, hands tasks to pilots under per-attempt passkeys, and serves the JSON API and
the web pages. It imports only `config` of the rest of floe.
"""

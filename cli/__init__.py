"""The `floe` command: one entry point whose subcommands reach every part of floe.

It is the only package that may import all the others (server, pilot, factory, client); each
subcommand module imports its heavy dependencies only when it runs, so `floe pilot` starts fast
and never loads server code.
"""

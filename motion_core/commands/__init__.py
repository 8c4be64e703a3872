"""CLI subcommands beyond ``sample``: one module per job (train, clone, export, ...).

Each module registers itself with :func:`motion_core.cli.command`; :func:`motion_core.cli.build_parser`
imports every module of this package, so adding a command is adding a file here.
"""

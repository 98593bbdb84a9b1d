"""``python -m copying_study`` / the ``copying-study`` console script."""

import sys
from pathlib import Path

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project


def main(*args, **kwargs):
    package_name = Path(__file__).parent.name
    argv = list(args) or sys.argv[1:]
    if argv and argv[0] == "audit":
        from copying_study.audit import cli as audit_cli

        return audit_cli(argv[1:])
    configure_project(package_name)
    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()

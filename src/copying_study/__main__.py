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
    if argv and argv[0] == "build-base":
        return build_base_cli(argv[1:])
    configure_project(package_name)
    run = find_run_command(package_name)
    return run(*args, **kwargs)


def project_base_spec(env: str) -> dict:
    """``finetune.embedded_base`` of the project's configuration in the working directory (``{}`` outside one)."""
    from pathlib import Path

    from kedro.config import OmegaConfigLoader

    conf = Path.cwd() / "conf"
    if not (conf / "base").is_dir():
        return {}
    loader = OmegaConfigLoader(conf_source=str(conf), base_env="base", default_run_env="local",
                               env=env if (conf / env).is_dir() else "base")
    return dict((loader["parameters"].get("finetune") or {}).get("embedded_base") or {})


def build_base_cli(argv: list[str]) -> int:
    """``copying-study build-base``: pretrain the embedded base model once (or say where the cached one is)."""
    import argparse
    import json
    import logging

    from copying_study.diffusion.base import DEFAULT_CACHE, ensure_base
    from copying_study.utils.device import pick_device

    parser = argparse.ArgumentParser(prog="copying-study build-base", description=(
        "Pretrain the embedded base model (docs/finetune.md 'The embedded base model') into its cache; a no-op "
        "when the cached one is there."))
    parser.add_argument("--cache", default=DEFAULT_CACHE, help=f"cache folder (default {DEFAULT_CACHE})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (the base is cached per device type)")
    parser.add_argument("--spec", default=None, help=(
        "overrides of the recipe as JSON; default: finetune.embedded_base of the project's conf (base + --env)"))
    parser.add_argument("--env", default="local", help="configuration environment read for the recipe (default "
                        "local)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = json.loads(args.spec) if args.spec is not None else project_base_spec(args.env)
    folder, record, built = ensure_base(spec, args.cache, pick_device(args.device))
    print(f"embedded base model {'built' if built else 'already cached'}: {folder}\n"
          f"  fingerprint {record['fingerprint'][:16]}, weights {record['weights_checksum'][:16]}, "
          f"pretraining {record.get('seconds')} s, final loss {record.get('final_loss'):.4f}")
    return 0


if __name__ == "__main__":
    main()

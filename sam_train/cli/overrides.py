"""Command-line overrides checked before a run starts, so that a typo is one line and exit 2
(Hydra itself prints several lines and exits 1)."""

from __future__ import annotations


def one_line(message: str) -> str:
    """Hydra's multi-line composition error as one line: the problem, the hint, the options."""
    lines = [line.strip() for line in message.strip().splitlines()]
    head, options, in_options = [], [], False
    for line in lines:
        if line.startswith("Available options in"):
            in_options = True
        elif line.startswith("Config search path"):
            break
        elif in_options and line:
            options.append(line)
        elif line and not line.startswith(("full_key:", "object_type=", "Set the environment")):
            head.append(line.rstrip("."))
    text = "; ".join(head) or "invalid override"
    return f"{text} (options: {', '.join(options)})" if options else text


def composition_error(args: list[str]) -> str | None:
    """Why the overrides in `args` do not compose (one line), or None when they do."""
    from hydra import compose, initialize_config_module

    try:
        with initialize_config_module("sam_train.conf", version_base="1.3"):
            compose("train", overrides=args, return_hydra_config=True)
    except Exception as err:  # Hydra raises one type per kind of mistake
        cause = f"\n{err.__cause__}" if err.__cause__ is not None else ""
        return one_line(f"{err}{cause}")
    return None

"""The ``musiclm`` command: one entry, subcommands imported only when used.

``fit``, ``validate`` and ``test`` go to LightningCLI (``musiclm.lightning_cli``); the other
subcommands are ``main(argv) -> int`` functions in the modules named below, so that
``musiclm --help`` stays fast and a broken optional dependency only breaks its own command.
"""

from __future__ import annotations

import importlib
import sys

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")

# subcommand -> (module with main(argv) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "plugins": ("musiclm.cli", "list registered codecs, semantic tokenizers and text encoders"),
    "data": ("musiclm.commands.data", "build corpora (`musiclm data demo`)"),
    "prepare": (
        "musiclm.commands.prepare",
        "audio shards, tokenizer fitting, token shards (`musiclm prepare --help`)",
    ),
    "generate": ("musiclm.commands.generate", "text -> music through the whole hierarchy"),
    "evaluate": ("musiclm.commands.evaluate", "MCC, FAD, attribute adherence, memorization"),
    "pipeline": (
        "musiclm.commands.pipeline",
        "every step from your corpus to a report, resumably (`musiclm pipeline --help`)",
    ),
    "demo": ("musiclm.commands.demo", "the whole system end to end on the demo corpus"),
}


def usage() -> str:
    lines = ["usage: musiclm <command> [options]", "", "commands:"]
    lines.append(f"  {'fit|validate|test':<18} train a stage: --config conf/<stage>.yaml")
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name:<18} {text}")
    lines.append("")
    lines.append("`musiclm <command> --help` describes each command.")
    return "\n".join(lines)


def plugins_main(argv: list[str]) -> int:
    from musiclm import registry

    if argv and argv[0] in ("-h", "--help"):
        print("usage: musiclm plugins\n\nPrints every plugin group with name -> target.")
        return 0
    print(registry.describe())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_SUBCOMMANDS:
        from musiclm.datamodules.shards import StreamStarved
        from musiclm.lightning_cli import run_lightning
        from musiclm.usage import SetupError, fail

        try:
            run_lightning([command, *rest])
        except (SetupError, StreamStarved) as exc:  # other errors keep their traceback
            return fail(f"musiclm {command}", exc)
        return 0
    if command == "plugins":
        return plugins_main(rest)
    if command not in COMMANDS:
        print(f"musiclm: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The `pytransformer` command: one module per family of commands (info; train and sample; the language models'
generate, chat, serve and perplexity; the encoders' embed, search and attention), each registering its parsers;
this module assembles them and runs one, turning a user's mistake into one line and an exit status."""

from __future__ import annotations

import sys

from .. import __version__
from . import finetune, info, llm, sentence, train
from .common import CommandList, Parser, UsageError, every_command

DESCRIPTION = """\
A transformer engine for CPU-only Python: train a small GPT, fine-tune language models with LoRA, run them from GGUF files, Hugging Face
folders or packages (SmolLM2, Gemma 3), serve them over the OpenAI API, embed and search sentences, and check the
kernels. Models are named by a path, a packaged name (smollm2, gemma3-270m, minilm) or a repo id in the local
Hugging Face cache; nothing is downloaded.

`pytransformer COMMAND --help` lists a command's options with their defaults."""


def resolve_model(name):
    """The file or folder a model's name stands for, as every command resolves it (for scripts and tests that
    start a command's model themselves)."""
    from ..io.resolve import resolve

    return resolve(name).path


def build_parser():
    parser = Parser(prog="pytransformer", description=DESCRIPTION, formatter_class=CommandList)
    parser.add_argument("--version", action="version", version=f"pytransformer {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    parents = [every_command()]
    for family in (info, train, finetune, llm, sentence):
        family.add_parsers(sub, parents)
    parser.commands = sub.choices  # (each command's parser: its errors name it)
    return parser


def parse(parser, argv):
    """The command's arguments. A command whose list of positionals may go on after an option names that list's
    dest in its `interleaved` default (`embed a --dtype int8 b` embeds a and b: argparse's parse_args takes the
    positionals before the first option only, and its parse_intermixed_args refuses subcommands); anything else
    left over is refused as argparse refuses it."""
    args, rest = parser.parse_known_args(argv)
    dest = getattr(args, "interleaved", None)
    if rest and dest and not any(a.startswith("-") for a in rest):
        getattr(args, dest).extend(rest)
    elif rest:
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv=None) -> int:
    """Runs one command. A user's mistake (a bad option, a missing or malformed file) is one line on stderr and a
    non-zero exit; Ctrl-C exits with 130; a closed pipe (`| head`) ends quietly. PYTRANSFORMER_DEBUG=1 shows the
    traceback of any error instead."""
    import os

    args = parse(build_parser(), argv)
    try:
        if args.threads is not None:
            from .._runtime import set_num_threads

            set_num_threads(args.threads)
        return args.func(args)
    except (UsageError, ValueError, OSError, RuntimeError, MemoryError) as e:
        if isinstance(e, BrokenPipeError):
            raise
        if os.environ.get("PYTRANSFORMER_DEBUG"):
            raise
        if isinstance(e, MemoryError):
            message = "out of memory; choose smaller sizes"
        elif isinstance(e, OSError) and e.filename:
            message = f"{e.filename}: {e.strerror}"
        else:
            message = str(e)
        print(f"pytransformer {args.command}: error: {message}", file=sys.stderr)
        _end_mpi_job(1)
        return 1
    except Exception:
        _end_mpi_job(1, traceback=True)
        raise
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _end_mpi_job(code, traceback=False):
    """Under mpiexec, one rank's error ends every rank (the others would wait forever in a collective)."""
    from ..distributed import launched_by_mpi

    if launched_by_mpi() and "mpi4py" in sys.modules:
        from ..distributed import world

        if world().size > 1:
            if traceback:
                import traceback as tb

                tb.print_exc()
            print(f"pytransformer: rank {world().rank} failed: ending the job", file=sys.stderr)
            world().abort(code)


def run() -> int:
    """The console script: main(), and a reader that closed the pipe (`pytransformer sample ... | head`) ends the
    command quietly instead of with a BrokenPipeError traceback."""
    import os

    try:
        code = main()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
        return 141


__all__ = ["UsageError", "build_parser", "main", "resolve_model", "run"]

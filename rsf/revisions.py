"""``rsf revisions REPO [--match GLOB]``: a hub repository's branches in training order.

Each line is ``REPO@REVISION`` and the step parsed from it (``–`` where the
name holds none), ready for ``--checkpoints`` or ``[trajectory] revisions``.
Offline (``HF_HUB_OFFLINE=1``) only the revisions in the local hub cache are
listed, and the header says so.
"""

from __future__ import annotations

from robustness.settings.options import RevisionsOptions

from .options import add_options, read_options

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "revisions", help="list a hub repository's branches in training order"
    )
    parser.add_argument("repo", help="a hub repository: org/name")
    add_options(parser, RevisionsOptions)
    parser.set_defaults(run=run)


def run(args) -> int:
    import probes

    if "@" in args.repo or args.repo.count("/") != 1:
        raise ValueError(f"{args.repo!r} is not a hub repository: give it as org/name")
    match = RevisionsOptions(**read_options(RevisionsOptions, args)).match
    names, origin = probes.list_revisions(args.repo, match=match)
    shown = f" matching {match!r}" if match else ""
    print(f"{args.repo}: {len(names)} revision(s){shown} from {origin}, in training order")
    for name in names:
        step = probes.revision_step(name)
        print(f"  {args.repo}@{name}  step {'–' if step is None else step}")
    return 0

"""`registry`: publish, promote, list and download model versions in Blob storage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from shared.config.names import MODELS_CONTAINER

if TYPE_CHECKING:
    from shared.adapters.registry import ModelRegistry

RegistryAction = Callable[["ModelRegistry", argparse.Namespace], int]


def publish(registry: ModelRegistry, args: argparse.Namespace) -> int:
    print(json.dumps({"version": registry.publish(args.model_dir)}))
    return 0


def promote(registry: ModelRegistry, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    print(json.dumps(asdict(registry.promote_if_better(args.model_dir)), indent=2))
    return 0


def champion(registry: ModelRegistry, args: argparse.Namespace) -> int:
    pointer = registry.champion()
    print(json.dumps(None if pointer is None else pointer.record, indent=2))
    return 0 if pointer else 1


def list_versions(registry: ModelRegistry, args: argparse.Namespace) -> int:
    champion_version = registry.champion_version()
    for version in registry.versions():
        print(f"{version}\tchampion" if version == champion_version else version)
    return 0


def download(registry: ModelRegistry, args: argparse.Namespace) -> int:
    version = args.version or registry.champion_version()
    if version is None:
        print("error: no champion yet; pass --version", file=sys.stderr)
        return 1
    print(registry.download(version, args.model_dir))
    return 0


def decisions(registry: ModelRegistry, args: argparse.Namespace) -> int:
    for decision in registry.decisions():
        print(json.dumps(decision))
    return 0


def no_flags(parser: argparse.ArgumentParser) -> None:
    """The action needs only --connection and --container."""


def model_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, required=True, help="model directory")


def download_flags(parser: argparse.ArgumentParser) -> None:
    model_dir_flag(parser)
    parser.add_argument("--version", help="version to download (default: the champion)")


REGISTRY_ACTIONS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], RegistryAction]] = {
    "publish": ("upload a model directory as a new version", model_dir_flag, publish),
    "promote": ("publish a model directory and make it champion if its backtest beats the champion's",
                model_dir_flag, promote),
    "champion": ("print the champion pointer (exit 1 when there is no champion)", no_flags, champion),
    "list": ("list the published versions, marking the champion", no_flags, list_versions),
    "decisions": ("print every promotion decision, oldest first, one JSON object a line (the audit log)",
                  no_flags, decisions),
    "download": ("download a version (default: the champion) into MODEL_DIR/<version>/, cached per version",
                 download_flags, download),
}  # fmt: skip


def add_registry(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "registry",
        help="publish, promote, list and download model versions in Blob storage",
        description="The model registry in Blob storage (container `models`): versions, the champion "
        "pointer, and the rule that moves it.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--connection", help="storage connection string (default: AzureWebJobsStorage or its "
                        "identity-based settings, else local Azurite)")  # fmt: skip
    common.add_argument("--container", default=MODELS_CONTAINER, help="registry container (default: models)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, (help_text, add_flags, run) in REGISTRY_ACTIONS.items():
        action_parser = actions.add_parser(action, parents=[common], help=help_text, description=help_text)
        add_flags(action_parser)
        action_parser.set_defaults(run_action=run)
    return parser


def run_registry(args: argparse.Namespace) -> int:
    from shared.adapters.registry import ModelRegistry, RegistryError
    from shared.adapters.storage import app_storage_connection, blob_service

    registry = ModelRegistry(blob_service(args.connection or app_storage_connection("blob")), args.container)
    try:
        return args.run_action(registry, args)
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

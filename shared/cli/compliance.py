"""`compliance`: train the technician-note classifier, score a catalogue, run the nightly job on files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shared.cli.common import progress


def add_compliance(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "compliance",
        help="component compliance: train the technician-note classifier, score a component catalogue",
        description="Component compliance (issue 6): a component made before 1995, in fair or poor condition, "
        "or made with plastic or iron is non-compliant. `train` fits the note classifier on a labelled "
        "components CSV and tracks the run in MLflow; `score` writes Component_ID, Car_ID, non_compliant, "
        "probability, needs_review, reason for each component.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="train the classifier (tracked in MLflow)",
        description="Hold out a quarter of the phrasings (the template column) to "
        "evaluate, then train on every labelled note and write the model directory.",
    )
    train.add_argument("--data", type=Path, required=True, help="components CSV with a label column")
    train.set_defaults(run_action=run_train)
    train.add_argument("--model-dir", type=Path, required=True, help="directory to write the model to")
    train.add_argument("--learning-rate", type=float, help="SGD step size (default 0.05)")
    train.add_argument("--alpha", type=float, help="L2 regularisation strength (default 1e-5)")
    train.add_argument("--epochs", type=int, help="passes over the training notes (default 30)")
    train.add_argument("--seed", type=int, help="seed of the held-out split and of SGD (default 0)")
    train.add_argument("--glossary", type=Path,
                       help="site glossary JSON: the reviewers' readings of the site's words, kept in the model "
                       "(README, Learning from the review queue)")  # fmt: skip
    score = actions.add_parser(
        "score",
        help="score components with a trained classifier",
        description="Score a components CSV (Component_ID, Car_ID, text).",
    )
    score.add_argument("--data", type=Path, required=True, help="components CSV")
    score.set_defaults(run_action=run_score)
    score.add_argument("--model-dir", type=Path, required=True, help="model directory written by train")
    score.add_argument("--out", type=Path, required=True, help="results CSV to write")
    alerts = actions.add_parser(
        "alerts",
        help="what the nightly compliance timer does, on local files",
        description="Score a components CSV, write the results and one "
        "component_compliance alert per car with non-compliant parts (JSON lines).",
    )
    alerts.add_argument("--data", type=Path, required=True, help="components CSV (Component_ID, Car_ID, text)")
    alerts.set_defaults(run_action=run_alerts)
    alerts.add_argument("--model-dir", type=Path, required=True, help="model directory written by train")
    alerts.add_argument("--out", type=Path, required=True, help="results CSV to write")
    alerts.add_argument("--alerts-out", type=Path, help="alerts to write, one JSON object a line")
    unread = actions.add_parser(
        "unread",
        help="the words that keep notes in review, most notes first",
        description="Score a components CSV and list the words the reader does not know in the notes it sent "
        "to review with a condition or material unread, most notes first, each with an example: what to answer "
        "in a site glossary (train --glossary).",
    )
    unread.add_argument("--data", type=Path, required=True, help="components CSV (Component_ID, Car_ID, text)")
    unread.set_defaults(run_action=run_unread)
    unread.add_argument("--model-dir", type=Path, required=True, help="model directory written by train")
    unread.add_argument("--top", type=int, default=30, help="words to print (default 30; --out gets all)")
    unread.add_argument("--out", type=Path, help="worklist CSV to write (every word)")
    publish = actions.add_parser(
        "publish",
        help="upload a trained classifier for the nightly timer to use",
        description="Upload the model directory to Blob container compliance-models "
        "and point champion.json at it (the timer uses the last published model).",
    )
    publish.set_defaults(run_action=run_publish)
    publish.add_argument("--model-dir", type=Path, required=True, help="model directory written by train")
    publish.add_argument(
        "--connection", help="storage connection string (default: AzureWebJobsStorage or its __serviceUri form)"
    )
    return parser


def run_compliance(args: argparse.Namespace) -> int:
    return args.run_action(args)


def run_train(args: argparse.Namespace) -> int:
    import os

    from shared.adapters.tracking import tracking_uri
    from shared.compliance import classifier as compliance
    from shared.compliance.review import read_site_glossary

    given = {name: getattr(args, name) for name in ("learning_rate", "alpha", "epochs", "seed")}
    params = compliance.TrainingParams(**{name: value for name, value in given.items() if value is not None})
    glossary = read_site_glossary(args.glossary) if args.glossary else None
    model = compliance.train_from_csv(args.data, args.model_dir, params=params, site_glossary=glossary,
                                      progress=progress, tracking_uri=tracking_uri(os.environ))  # fmt: skip
    print(json.dumps({"version": model.version, "model_dir": str(args.model_dir),
                      "mlflow_run_id": model.metadata["mlflow_run_id"], "held_out": model.metadata["metrics"]},
                     indent=2))  # fmt: skip
    return 0


def run_score(args: argparse.Namespace) -> int:
    from shared.compliance import classifier as compliance

    results = compliance.score_from_csv(args.data, args.model_dir, args.out)
    flagged = results[compliance.NON_COMPLIANT] == 1
    print(f"scored {len(results):,} components: {int(flagged.sum()):,} non-compliant on "
          f"{results.loc[flagged, 'Car_ID'].nunique():,} cars, {int(results[compliance.NEEDS_REVIEW].sum()):,} "
          f"need review")  # fmt: skip
    print(f"results: {args.out}")
    return 0


def run_unread(args: argparse.Namespace) -> int:
    from shared.compliance import classifier as compliance
    from shared.compliance.review import review_worklist

    model = compliance.load_model(args.model_dir)
    components = compliance.read_components_csv(args.data)
    results = compliance.score_components(model, components)
    worklist = review_worklist(components, results, model.lexicon)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        worklist.to_csv(args.out, index=False)
    print(f"{int(results[compliance.NEEDS_REVIEW].sum()):,} of {len(results):,} notes need review; "
          f"{len(worklist):,} words the reader does not know keep them there:")  # fmt: skip
    for row in worklist.head(args.top).itertuples(index=False):
        print(f"  {row.word!r}: {row.review_notes:,} notes ({row.share_in_review:.0%} of those holding it), "
              f"e.g. {row.example!r}")  # fmt: skip
    if args.out is not None:
        print(f"worklist: {args.out}")
    return 0


def run_alerts(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from shared.compliance import classifier as compliance
    from shared.config.settings import load_settings
    from shared.handlers import compliance as compliance_job

    model = compliance.load_model(args.model_dir)
    components = compliance.read_components_csv(args.data)
    results, batch = compliance_job.compliance_run(model, components, datetime.now(UTC),
                                                   load_settings().service_booking_url)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.out, index=False)
    if args.alerts_out is not None:
        args.alerts_out.parent.mkdir(parents=True, exist_ok=True)
        args.alerts_out.write_text("".join(json.dumps(alert) + "\n" for alert in batch.alerts))
    print(json.dumps({**batch.summary, "results": str(args.out),
                      "alerts_out": None if args.alerts_out is None else str(args.alerts_out)}, indent=2))  # fmt: skip
    return 0


def run_publish(args: argparse.Namespace) -> int:
    from shared.adapters.storage import app_storage_connection, blob_service
    from shared.handlers import compliance as compliance_job

    blobs = blob_service(args.connection or app_storage_connection("blob"))
    print(json.dumps({"version": compliance_job.publish_model(blobs, args.model_dir),
                      "container": compliance_job.MODELS_CONTAINER}))  # fmt: skip
    return 0

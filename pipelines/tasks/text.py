"""The text kind: classifying short texts into the task's declared labels.

Raw rows are [text, label]; prepare splits them by a keyed hash of each text (texts are exchangeable,
unlike a series' steps, and a text keeps its split when the corpus grows) and fits the encoder (byte-level BPE subwords, or a word
vocabulary) on the training texts. train@<task> first pretrains a language model on the training
texts (and the task's `unlabelled` file) and every variant starts from its embedding and core
(pipelines/train/pretrain.py). Scoring is accuracy, macro-F1 and per-class precision and recall
through the served pyfunc, beside TF-IDF + logistic regression fitted on the same training split.

Labels: the task's `labels`, or, when it declares none, the labels found in the data, sorted (so the
same data gives the same output order on every machine). Like the default variant, they are derived
settings: prepare writes them to settings.json, prints them once, and train logs them as params.

Training, serving and plotting libraries are imported where they are used: validation and merging
also run in `seqops data add`, which should not pay for importing torch, MLflow or matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd

from pipelines.config import Params, TextTask, Variant
from pipelines.data.atomic import write_atomic
from pipelines.data.validate import InvalidDataError, validate_text
from pipelines.prepare.features import SPLITS, Vocabulary, text_split
from pipelines.project import pretrained_dir
from pipelines.tasks.base import Calibration, Scored, shared_model_config, write_counts
from pipelines.tasks.defaults import text_epochs
from pipelines.tasks.settings import describe, write_settings

if TYPE_CHECKING:
    from models import SequenceModel
    from pipelines.train.datamodules import TextDataModule

TEXTS_FILE = "texts.parquet"
# The logged model's input example and the example REST request: one pleased, one unhappy customer.
EXAMPLE_TEXTS = ["What a great flight, the crew was lovely!", "My bag is lost and nobody answers the phone."]


class TextKind:
    """Text classification tasks (`kind: text`); `sentiment` is the built-in one."""

    name = "text"
    selection_method = "the validation split"

    def __init__(self, spec: TextTask) -> None:
        self.spec = spec
        self._datamodules: dict[tuple[Path, str], TextDataModule] = {}
        self._labels: list[str] | None = list(spec.labels) if spec.labels is not None else None

    @property
    def labels(self) -> list[str]:
        """The classes in output order: declared, or read from the data by `_labels_of` first."""
        if self._labels is None:
            raise RuntimeError("the task declares no labels and none were read from its data yet")
        return self._labels

    def _labels_of(self, frame: pd.DataFrame) -> list[str]:
        """The declared labels, or the sorted labels of `frame` (raw or prepared rows) when none are declared."""
        if self.spec.labels is None:
            self._labels = _found_labels(frame)
        return self.labels

    def read_settings(self) -> dict[str, Any]:
        spec = self.spec
        return {"text": spec.text, "label": spec.label, "labels": spec.labels, "duplicates": spec.duplicates}

    def holdout_split(self) -> str:
        settings = self.spec.prepare
        return (f"by text hash (seed {settings.seed}, holdout {settings.holdout:g}, "
                f"validation {settings.validation:g})")

    def appended_gaps(self, existing: pd.DataFrame, merged: pd.DataFrame) -> list[str]:
        return []  # texts have no order to leave a gap in

    def outputs(self) -> str | None:
        """The labels in output order (`labels ['negative', 'positive']`), once declared or read from the data."""
        return f"labels {self._labels}" if self._labels is not None else None

    def validate(self, frame: pd.DataFrame, name: str) -> tuple[pd.DataFrame, dict[str, int]]:
        spec = self.spec
        return validate_text(frame, text=spec.text, label=spec.label, labels=spec.labels,
                             duplicates=spec.duplicates, name=name)

    def merge(self, existing: pd.DataFrame, new: pd.DataFrame, name: str) -> tuple[pd.DataFrame, dict[str, int]]:
        """Existing rows, then the file's, with the task's duplicate policy applied to the whole: a
        repeat of an existing text is dropped like any other repeat."""
        columns = {"text": self.spec.text, "label": self.spec.label}  # messages name the user's columns
        return validate_text(pd.concat([existing, new], ignore_index=True).rename(columns=columns),
                             text=self.spec.text, label=self.spec.label, labels=self.spec.labels,
                             duplicates=self.spec.duplicates, name=f"{name} (appended)")

    def check_preparable(self, raw: pd.DataFrame, name: str) -> None:
        """What prepare refuses in a raw table: one label only, a declared label no text has, a label with fewer
        texts than splits (each needs one in train, validation and holdout). `seqops data add` checks it too,
        so a file that would break the next run is refused before anything is written."""
        counts = raw["label"].astype(str).value_counts()
        if len(counts) < 2:
            raise InvalidDataError(f"{name}: every text has the label {counts.index.tolist()}: a classifier "
                                   f"needs texts of at least two labels; add texts of the others")
        if absent := [label for label in self.spec.labels or [] if label not in counts.index]:
            raise InvalidDataError(f"{name}: labels {absent} are declared in `labels` but no text has them; "
                                   f"a classifier cannot learn a label it never sees: add texts with them or take "
                                   f"them out of `labels` (found: {counts.to_dict()})")
        if (rare := counts[counts < len(SPLITS)]).any():
            raise InvalidDataError(f"{name}: label counts {dict(sorted(counts.items()))}: every label needs at least "
                                   f"{len(SPLITS)} texts, one each for train, validation and holdout; add texts of the "
                                   f"rare labels ({', '.join(sorted(rare.index))}) or leave their rows out")

    def prepare(self, raw: pd.DataFrame, prepared: Path) -> None:
        """texts.parquet (every row with its split, `text_split`), the encoder fitted on the training texts
        (tokenizer.json for subwords, vocabulary.json for words), splits.json."""
        from pipelines.prepare.text import TOKENIZER_FILE, VOCABULARY_FILE, SubwordTokenizer

        given, settings = self.spec, self.spec.prepare
        self.check_preparable(raw, prepared.name)
        texts = self._split(raw)
        derived = self._derived(texts)
        self._labels_of(raw)
        training = given.training
        if training.max_epochs is None:
            training = training.model_copy(update={"max_epochs": derived["training.max_epochs"]})
        self.spec = given.model_copy(update={"labels": self.labels, "training": training})
        write_settings(prepared, given, self.spec, derived)
        print(describe(prepared.name, derived), flush=True)
        train = texts.loc[texts["split"] == "train", "text"]
        for stale in (TOKENIZER_FILE, VOCABULARY_FILE):
            (prepared / stale).unlink(missing_ok=True)
        if settings.tokenizer == "subword":
            SubwordTokenizer.fit(train, settings.max_vocab, settings.min_freq).save(prepared / TOKENIZER_FILE)
        else:
            Vocabulary.fit(train, min_freq=settings.min_freq, max_size=settings.max_vocab).save(
                prepared / VOCABULARY_FILE)
        write_atomic(texts, prepared / TEXTS_FILE)
        self._prepare_base(texts, prepared)
        write_counts(texts.groupby(["split", "label"]).size().unstack(fill_value=0), prepared / "splits.json")

    def derived_settings(self, raw: pd.DataFrame) -> dict[str, Any]:
        return self._derived(self._split(raw))

    def _split(self, raw: pd.DataFrame) -> pd.DataFrame:
        """`raw` with each text's split (`text_split`: a keyed hash, so a text keeps its split)."""
        settings = self.spec.prepare
        return raw.assign(split=text_split(raw["text"].tolist(), raw["label"].tolist(), settings.validation,
                                           settings.holdout, settings.seed))

    def _derived(self, texts: pd.DataFrame) -> dict[str, Any]:
        """The settings the task leaves out, from its split texts: labels (sorted), the variants' names,
        training.max_epochs (from the training split's size)."""
        given = self.spec
        derived: dict[str, Any] = {}
        if given.labels is None:
            derived["labels"] = _found_labels(texts)
        if "variants" not in given.model_fields_set:
            derived["variants"] = [v.name for v in given.variants]
        if given.training.max_epochs is None:
            derived["training.max_epochs"] = text_epochs(int((texts["split"] == "train").sum()),
                                                         given.training.batch_size)
        return derived

    def _prepare_base(self, texts: pd.DataFrame, prepared: Path) -> None:
        """TF-IDF + logistic regression fitted on the training split and its log-probabilities of every text
        (out-of-fold on the training texts), when a variant has `base: tfidf_logreg`; stale ones removed."""
        from pipelines.evaluate.baselines import BASE_FOLDS, tfidf_logreg_log_proba
        from pipelines.prepare.text import BASE_LOG_PROBA_FILE, BASE_MODEL_FILE, write_base

        for stale in (BASE_MODEL_FILE, BASE_LOG_PROBA_FILE):
            (prepared / stale).unlink(missing_ok=True)
        based = [v.name for v in self.spec.variants if v.base != "none"]
        if not based:
            return
        print(f"prepare@{prepared.name}: fitting the TF-IDF + logistic regression base of {', '.join(based)} "
              f"(C by cross-validation, then {BASE_FOLDS} out-of-fold fits)", flush=True)
        counts = texts.loc[texts["split"] == "train", "label"].astype(str).value_counts()
        if rare := {label: int(n) for label, n in counts.items() if n < BASE_FOLDS}:
            print(f"prepare@{prepared.name}: labels {rare} have fewer training texts than the base's {BASE_FOLDS} "
                  f"folds; a fold fitted without one gives it the lowest log-probability of any fold", flush=True)
        pipeline, log_proba = tfidf_logreg_log_proba(texts["text"].tolist(), texts["label"].astype(str).tolist(),
                                                     (texts["split"] == "train").to_numpy(), self.labels,
                                                     self.spec.prepare.seed)
        write_base(prepared, pipeline, log_proba, self.labels)

    def load_prepared(self, prepared: Path) -> pd.DataFrame:
        frame = pd.read_parquet(prepared / TEXTS_FILE)
        self._labels_of(frame)
        return frame

    def datamodule(self, prepared: Path, variant: Variant) -> TextDataModule:
        from pipelines.train.datamodules import TextDataModule

        key = (prepared, variant.base)
        if key not in self._datamodules:
            labels = self._labels_of(self.load_prepared(prepared))
            dm = TextDataModule(prepared, labels, self.spec.prepare.max_length, self.spec.training.batch_size,
                                base=variant.base != "none")
            dm.setup("fit")
            self._datamodules[key] = dm
        return self._datamodules[key]

    def model_config(self, variant: Variant, params: Params, datamodule: TextDataModule) -> dict[str, Any]:
        return {**shared_model_config(variant, self.spec, params), "input_size": 1, "head": "multiclass",
                "output_size": len(datamodule.labels), "vocab_size": len(datamodule.encoder),
                "embedding_dim": variant.embedding_dim, "pooling": variant.pooling,
                "embedding_dropout": variant.embedding_dropout}

    def pretrain(self, root: Path, task: str, params: Params) -> dict[str, Any] | None:
        """The language models the variants start from (pipelines/train/pretrain.py), or None with
        `pretrain.method: none`; earlier ones are removed first, so a variant never loads a stale one."""
        import shutil

        from pipelines.prepare.text import encoder_path, load_encoder
        from pipelines.project import prepared_dir
        from pipelines.train.pretrain import pretrain_task

        out = pretrained_dir(root, task)
        shutil.rmtree(out, ignore_errors=True)
        if self.spec.pretrain.method == "none":
            return None
        prepared = prepared_dir(root, task)
        return pretrain_task(root, task, self.spec, params, self.load_prepared(prepared),
                             load_encoder(encoder_path(prepared)), out)

    def selection_score(self, prepared: Path, variant: Variant, config: dict[str, Any], metric: str) -> None:
        """The one-step val_loss (cross-entropy on the validation texts) picks a classifier's epoch."""
        return None

    def warm_start(self, root: Path, task: str, network: SequenceModel, variant: Variant) -> list[str]:
        """The pretrained embedding and core loaded into the variant's network (empty: none pretrained). A
        `base` variant's readout starts at zero, so before its first update it answers as its base model."""
        return self.start(network, variant, pretrained_dir(root, task))

    def start(self, network: SequenceModel, variant: Variant, pretrained: Path | None) -> list[str]:
        """`warm_start` from the language models in `pretrained` (None: from scratch)."""
        from pipelines.train.pretrain import warm_start

        if variant.base != "none":
            network.net.zero_readout()
        return warm_start(network, variant, pretrained) if pretrained is not None else []

    def log_model(self, prepared: Path, directory: Path, network: SequenceModel, config: dict[str, Any],
                  variant: Variant | None = None) -> str:
        """The sentiment pyfunc, carrying the fitted encoder so the server encodes text as training did
        (one encoder for every variant), and a `base` variant's base model, which it corrects."""
        from pipelines.prepare.text import BASE_MODEL_FILE, encoder_path
        from pipelines.serving.baseline_pyfunc import baseline_requirements
        from pipelines.serving.pyfunc import log_pyfunc
        from pipelines.serving.sentiment import BASE_ARTIFACT, SentimentModel, sentiment_signature

        spec = self.spec
        payload = {"model": config, "serving": spec.serving.model_dump(),
                   "labels": self._labels_of(self.load_prepared(prepared)), "max_length": spec.prepare.max_length}
        artifacts, requirements = {"encoder": encoder_path(prepared)}, None
        if variant is not None and variant.base != "none":
            artifacts[BASE_ARTIFACT], requirements = prepared / BASE_MODEL_FILE, baseline_requirements()
        return log_pyfunc(directory, SentimentModel(), network, payload, artifacts, sentiment_signature(),
                          pd.DataFrame({"text": EXAMPLE_TEXTS}), requirements)

    def score(self, frame: pd.DataFrame, model: Any, segment: str) -> Scored:
        """Classification metrics of a sentiment pyfunc on `segment`; the confusion matrix is the details.

        The pyfunc refuses what the REST endpoint refuses: requests over max_records, and (by default)
        texts over max_text_length characters, which a corpus may hold; those are scored on their prefix.
        """
        from pipelines.evaluate.metrics import classification_metrics

        part = frame[frame["split"] == segment]
        return self._scored(classification_metrics(part["label"].tolist(), self.predicted_labels(frame, model, segment),
                                                   self.labels))

    def predicted_labels(self, frame: pd.DataFrame, model: Any, segment: str) -> list[str]:
        """The label a sentiment pyfunc answers for each text of `segment`, in the frame's order: what `score`
        scores, for comparisons text by text (bench/text_quality.py's paired interval)."""
        return self._predict(frame[frame["split"] == segment], model)["label"].tolist()

    def _predict(self, part: pd.DataFrame, model: Any) -> pd.DataFrame:
        """The pyfunc's answers for `part`'s texts, in requests of at most serving.max_records."""
        texts = [text[:self.spec.serving.max_text_length] for text in part["text"]]
        size = self.spec.serving.max_records
        return pd.concat([model.predict(pd.DataFrame({"text": texts[start:start + size]}))
                          for start in range(0, len(texts), size)], ignore_index=True)

    def _probabilities(self, frame: pd.DataFrame, model: Any, segment: str) -> tuple[Any, Any]:
        """(served probabilities [N, C] in label order, true class indices [N]) of `segment`."""
        import numpy as np

        part = frame[frame["split"] == segment]
        scores = self._predict(part, model)["scores"]
        probabilities = np.array([[row[label] for label in self.labels] for row in scores])  # [N, C]
        return probabilities, np.array([self.labels.index(label) for label in part["label"]])  # [N]

    def calibrate(self, frame: pd.DataFrame, model: Any, validation: Scored) -> Calibration:
        """Temperature scaling fitted on the validation split; ECE (15 bins) before and after on the holdout
        (pipelines/evaluate/calibration.py)."""
        from pipelines.evaluate.calibration import temperature_calibration

        payload, metrics, reliability = temperature_calibration(self._probabilities(frame, model, "validation"),
                                                                self._probabilities(frame, model, "holdout"))
        return Calibration(payload, metrics, reliability)

    def plot_calibration(self, run_id: str, title: str, calibration: Calibration) -> None:
        from pipelines.train.plots import log_reliability_diagram

        log_reliability_diagram(run_id, *calibration.details,
                                f"{title}: ECE {calibration.metrics['ece_uncalibrated']:.3f} -> "
                                f"{calibration.metrics['ece']:.3f} (T = {calibration.metrics['temperature']:.2f})")

    def tfidf_logreg(self, prepared: Path, seed: int) -> Any:
        """TF-IDF + logistic regression fitted on the training split: prepare's fit when it made one for `base`
        variants (the same, deterministic fit), else fitted now."""
        from pipelines.evaluate.baselines import fit_tfidf_logreg
        from pipelines.prepare.text import read_base_model

        pipeline = read_base_model(prepared)
        if pipeline is None:
            frame = self.load_prepared(prepared)
            train = frame[frame["split"] == "train"]
            pipeline = fit_tfidf_logreg(train["text"].tolist(), train["label"].tolist(), seed)
        return pipeline

    def baselines(self, prepared: Path, seed: int) -> dict[str, Callable[[Path], str]]:
        """TF-IDF + logistic regression (C by cross-validation) fitted on the training split, served as a
        pyfunc on raw text with the sentiment contract; prepare's fit when it made one for `base` variants."""
        from pipelines.evaluate.baselines import chosen_c
        from pipelines.serving.baseline_pyfunc import TfidfSentimentModel, log_baseline_pyfunc, save_pipeline
        from pipelines.serving.sentiment import sentiment_signature

        def log(directory: Path) -> str:
            pipeline = self.tfidf_logreg(prepared, seed)
            spec = {"serving": self.spec.serving.model_dump(), "labels": self._labels_of(self.load_prepared(prepared)),
                    "baseline": {"C": chosen_c(pipeline)}}
            return log_baseline_pyfunc(directory, TfidfSentimentModel(), spec,
                                       {"pipeline": save_pipeline(directory, pipeline)}, sentiment_signature(),
                                       pd.DataFrame({"text": EXAMPLE_TEXTS}))
        return {"tfidf_logreg": log}

    def ensemble(self, prepared: Path, ranked: list[str]) -> Callable[[Path], str] | None:
        """The mean probabilities of the best `evaluate.ensemble_size` variants (`ranked` best first): of
        seeds, when the variants differ only in their `seed`."""
        from pipelines.serving.baseline_pyfunc import (
            MEMBER_PREFIX,
            EnsembleSentimentModel,
            log_baseline_pyfunc,
        )
        from pipelines.serving.sentiment import sentiment_signature

        members = ranked[:self.spec.evaluate.ensemble_size]
        if len(members) < 2:
            return None

        def log(directory: Path) -> str:
            spec = {"serving": self.spec.serving.model_dump(), "labels": self._labels_of(self.load_prepared(prepared))}
            artifacts = {f"{MEMBER_PREFIX}{i}": uri for i, uri in enumerate(members)}
            return log_baseline_pyfunc(directory, EnsembleSentimentModel(), spec, artifacts, sentiment_signature(),
                                       pd.DataFrame({"text": EXAMPLE_TEXTS}))
        return log

    def plot(self, run_id: str, title: str, scored: Scored, baselines: dict[str, Scored]) -> None:
        from pipelines.train.plots import log_confusion_matrix

        log_confusion_matrix(run_id, scored.details, self.labels,
                             f"{title}: macro-F1 {scored.metrics['macro_f1']:.3f} (TF-IDF baseline "
                             f"{baselines['tfidf_logreg'].metrics['macro_f1']:.3f})")

    def example_request(self, prepared: Path) -> dict[str, Any]:
        return {"dataframe_records": [{"text": text} for text in EXAMPLE_TEXTS]}

    @staticmethod
    def _scored(metrics: dict[str, Any]) -> Scored:
        """classification_metrics' output as flat metrics, its confusion matrix kept aside for the plot."""
        return Scored({k: v for k, v in metrics.items() if k != "confusion_matrix"}, metrics["confusion_matrix"])


def _found_labels(frame: pd.DataFrame) -> list[str]:
    """The labels of `frame`'s rows, sorted: a task's classes when it declares none."""
    return sorted(frame["label"].astype(str).unique())

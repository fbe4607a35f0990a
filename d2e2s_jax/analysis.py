"""Error analysis of triplet predictions against gold: scores, error categories, buckets.

`analyze(gold, [(source, predictions), ...])` aligns each predictions file with the gold
examples by id, or by order for files without ids (through `evaluation.score`, which also
makes the checks: no repeated, missing or extra id, the same number of records, the same
tokens) and builds an `Analysis`; `render_html` turns it
into one self-contained page (inline CSS, no script, no external resource) and
`render_markdown` into the summary that `experiments/analyze.py` prints. Every score,
bucketed or not, is `evaluation.score` of the examples concerned.

Error categories. Per sentence, G is the set of gold triplets and P the set of predicted
triplets (repeats count once, as in `evaluation`). A triplet in both is correct. Every
predicted triplet p not in G gets exactly one category, the first of these that applies:

1. `wrong_sentiment`: a gold triplet has p's aspect span and p's opinion span (both
   exact); its sentiment differs from p's (p's may be INVALID).
2. `wrong_pairing`: p's aspect span is the aspect of a gold triplet of the sentence and
   p's opinion span the opinion of a gold triplet, but no gold triplet pairs the two.
   (Both spans are right, so this wins over the boundary categories.)
3. `aspect_boundary`: a gold triplet has p's opinion span and p's sentiment, and its
   aspect span overlaps p's (shares a word) but differs from it.
4. `opinion_boundary`: the same with the roles of aspect and opinion swapped.
5. `spurious`: none of the above (a prediction with no related gold triplet; this
   includes a boundary error that also has the wrong sentiment).

Categories 1 and 2 exclude each other (the pair is gold, or it is not), and when 3 and 4
both apply so does 2, so the order only decides between 2 and a boundary category. The
gold triplets that make a category apply are the prediction's related gold triplets
(for `wrong_pairing`: those that share p's aspect span or p's opinion span). A gold
triplet g not in P is:

6. `missed` when it is no prediction's related gold triplet;
7. otherwise not counted again: the related prediction's error accounts for it (the
   analysis reports how many such gold triplets there are, `explained_gold`).

So every non-matching predicted triplet is counted in exactly one of categories 1-5,
and every non-matching gold triplet is either `missed` or explained.

Per-sentence marks are the plain set view: a gold triplet in P is `correct`, one not in
P is `missed` (category `missed`, or explained by the related predictions shown next to
it), a predicted triplet not in G is `spurious` (with its category).

Buckets (triplet scores only, each an `evaluation.score`):

* by the number of gold triplets of the sentence (1, 2, 3, 4+; a 0 row when the gold has
  sentences without triplets): all of a sentence's gold and predicted triplets go to
  its bucket;
* by aspect length and by opinion length in words (1, 2, 3+): each gold and each
  predicted triplet goes to the bucket of its own aspect (respectively opinion) span,
  so precision counts predictions and recall gold triplets of that length (a correct
  triplet has the same spans on both sides, hence the same bucket).

Differences between two predictions files A and B (every pair, in the order given): the
sentences whose predicted triplet sets differ and, per sentence, the correct triplets
only A predicted and only B predicted, and the wrong triplets only A or only B predicted.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from d2e2s_jax import evaluation
from d2e2s_jax.data.examples import Example, Span, Triplet
from d2e2s_jax.evaluation import PRF, SCORE_NAMES

WRONG_SENTIMENT = "wrong_sentiment"
WRONG_PAIRING = "wrong_pairing"
ASPECT_BOUNDARY = "aspect_boundary"
OPINION_BOUNDARY = "opinion_boundary"
SPURIOUS = "spurious"
MISSED = "missed"
# The error categories in the order the report lists them (the module docstring
# defines them; predicted triplets are tried in the order of the first five).
ERROR_CATEGORIES = (ASPECT_BOUNDARY, OPINION_BOUNDARY, WRONG_SENTIMENT, WRONG_PAIRING, MISSED, SPURIOUS)
CATEGORY_TITLES = {
    ASPECT_BOUNDARY: "aspect boundary",
    OPINION_BOUNDARY: "opinion boundary",
    WRONG_SENTIMENT: "wrong sentiment",
    WRONG_PAIRING: "wrong pairing",
    MISSED: "missed",
    SPURIOUS: "spurious",
}
EXPLAINED_GOLD_TITLE = "(non-matching gold explained by a related prediction)"

CORRECT = "correct"  # the per-sentence marks: CORRECT, MISSED, SPURIOUS
TRIPLET_COUNT_BUCKETS = ("1", "2", "3", "4+")
SPAN_LENGTH_BUCKETS = ("1", "2", "3+")


@dataclasses.dataclass(frozen=True)
class SentenceErrors:
  """The categories of one sentence's non-matching triplets.

  Attributes:
    predicted: per non-matching predicted triplet (prediction order), its category and
      its related gold triplets.
    missed: the non-matching gold triplets that no prediction is related to.
    explained: per other non-matching gold triplet, the predictions related to it.
  """

  predicted: Dict[Triplet, Tuple[str, Tuple[Triplet, ...]]]
  missed: Tuple[Triplet, ...]
  explained: Dict[Triplet, Tuple[Triplet, ...]]


def _overlap(first: Span, second: Span) -> bool:
  return first[0] < second[1] and second[0] < first[1]


def _classify(prediction: Triplet, gold: Sequence[Triplet]) -> Tuple[str, Tuple[Triplet, ...]]:
  """The category of a predicted triplet that is not gold, and its related gold triplets."""
  same_pair = tuple(g for g in gold if (g.aspect, g.opinion) == (prediction.aspect, prediction.opinion))
  if same_pair:
    return WRONG_SENTIMENT, same_pair
  if (any(g.aspect == prediction.aspect for g in gold) and any(g.opinion == prediction.opinion for g in gold)):
    return WRONG_PAIRING, tuple(g for g in gold if g.aspect == prediction.aspect or g.opinion == prediction.opinion)
  for category, kept, moved in ((ASPECT_BOUNDARY, "opinion", "aspect"), (OPINION_BOUNDARY, "aspect", "opinion")):
    related = tuple(g for g in gold if getattr(g, kept) == getattr(prediction, kept) and
                    g.sentiment == prediction.sentiment and _overlap(getattr(g, moved), getattr(prediction, moved)))
    if related:
      return category, related
  return SPURIOUS, ()


def classify_errors(gold: Iterable[Triplet], predicted: Iterable[Triplet]) -> SentenceErrors:
  """Puts each non-matching triplet of one sentence in its category (module docstring).

  Args:
    gold: the sentence's gold triplets (repeats count once).
    predicted: its predicted triplets (repeats count once).

  Returns:
    The sentence's `SentenceErrors`.
  """
  gold, predicted = tuple(dict.fromkeys(gold)), tuple(dict.fromkeys(predicted))
  gold_set, predicted_set = set(gold), set(predicted)
  categories = {p: _classify(p, gold) for p in predicted if p not in gold_set}
  related_predictions: Dict[Triplet, List[Triplet]] = {}
  for prediction, (_, related) in categories.items():
    for g in related:
      related_predictions.setdefault(g, []).append(prediction)
  unmatched = [g for g in gold if g not in predicted_set]
  return SentenceErrors(predicted=categories,
                        missed=tuple(g for g in unmatched if g not in related_predictions),
                        explained={g: tuple(related_predictions[g]) for g in unmatched if g in related_predictions})


@dataclasses.dataclass(frozen=True)
class MarkedTriplet:
  """A triplet of the per-sentence view.

  Attributes:
    triplet: the triplet.
    mark: `correct`, `missed` (gold, not predicted) or `spurious` (predicted, not gold).
    category: the error category: of a spurious-marked prediction its category, of a
      missed-marked gold triplet `missed` or None when a related prediction explains it.
    related: the related gold triplets of a prediction, the related predictions of an
      explained gold triplet.
    score: the prediction's score, when the predictions file has one.
  """

  triplet: Triplet
  mark: str
  category: Optional[str] = None
  related: Tuple[Triplet, ...] = ()
  score: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class SentenceReport:
  """One sentence under one predictions file: its marked triplets, gold first."""

  example_id: str
  tokens: Tuple[str, ...]
  gold: Tuple[Triplet, ...]
  predicted: Tuple[Triplet, ...]
  marked: Tuple[MarkedTriplet, ...]


@dataclasses.dataclass(frozen=True)
class FileAnalysis:
  """The analysis of one predictions file.

  Attributes:
    label: its short name in the report (A, B, ...).
    source: its path.
    scores: `evaluation.score` over the whole file.
    error_counts: the number of triplets of each of `ERROR_CATEGORIES`.
    explained_gold: the number of non-matching gold triplets a prediction explains.
    sentences: one `SentenceReport` per gold sentence, in gold order.
    by_triplet_count: {bucket: (number of sentences, scores)}.
    by_aspect_length: {bucket: scores}.
    by_opinion_length: {bucket: scores}.
  """

  label: str
  source: str
  scores: Dict[str, PRF]
  error_counts: Dict[str, int]
  explained_gold: int
  sentences: Tuple[SentenceReport, ...]
  by_triplet_count: Dict[str, Tuple[int, Dict[str, PRF]]]
  by_aspect_length: Dict[str, Dict[str, PRF]]
  by_opinion_length: Dict[str, Dict[str, PRF]]


@dataclasses.dataclass(frozen=True)
class SentenceDifference:
  """Where two files' predictions for one sentence differ (each set in prediction order)."""

  example_id: str
  tokens: Tuple[str, ...]
  only_first_right: Tuple[Triplet, ...]
  only_second_right: Tuple[Triplet, ...]
  only_first_wrong: Tuple[Triplet, ...]
  only_second_wrong: Tuple[Triplet, ...]


@dataclasses.dataclass(frozen=True)
class Difference:
  """The sentences where two predictions files differ."""

  first: str  # labels
  second: str
  sentences: Tuple[SentenceDifference, ...]

  @property
  def title(self) -> str:
    return f"{self.first} vs {self.second}"


@dataclasses.dataclass(frozen=True)
class Analysis:
  """Everything the report shows."""

  gold_source: str
  num_sentences: int
  num_gold_triplets: int
  files: Tuple[FileAnalysis, ...]
  differences: Tuple[Difference, ...]


def _label(position: int) -> str:
  return chr(ord("A") + position) if position < 26 else f"P{position + 1}"


def _count_bucket(count: int) -> str:
  return str(count) if count < 4 else "4+"


def _length_bucket(span: Span) -> str:
  length = span[1] - span[0]
  return str(length) if length < 3 else "3+"


def _only_triplets(example: Example, keep: Callable[[Triplet], bool]) -> Example:
  """The example with only its triplets that `keep` accepts (and no predicted terms)."""
  return Example(id=example.id, tokens=example.tokens, triplets=tuple(t for t in example.triplets if keep(t)))


def _span_buckets(gold: Sequence[Example], predicted: Sequence[Example], role: str,
                  **sources: str) -> Dict[str, Dict[str, PRF]]:
  """Triplet scores by the length of each triplet's `role` span; `predicted` in gold order."""
  buckets = {}
  for bucket in SPAN_LENGTH_BUCKETS:
    keep = lambda triplet, bucket=bucket: _length_bucket(getattr(triplet, role)) == bucket
    buckets[bucket] = evaluation.score([_only_triplets(e, keep) for e in gold],
                                       [_only_triplets(e, keep) for e in predicted], align="order", **sources)
  return buckets


def _sentence_report(gold: Example, prediction: Example) -> Tuple[SentenceReport, SentenceErrors]:
  gold_triplets = tuple(dict.fromkeys(gold.triplets))
  scores: Dict[Triplet, float] = {}
  if prediction.triplet_scores is not None:
    for triplet, value in zip(prediction.triplets, prediction.triplet_scores):
      scores.setdefault(triplet, value)
  predicted = tuple(dict.fromkeys(prediction.triplets))
  errors = classify_errors(gold_triplets, predicted)
  predicted_set = set(predicted)
  marked = []
  for triplet in gold_triplets:
    if triplet in predicted_set:
      marked.append(MarkedTriplet(triplet, CORRECT, score=scores.get(triplet)))
    elif triplet in errors.explained:
      marked.append(MarkedTriplet(triplet, MISSED, related=errors.explained[triplet]))
    else:
      marked.append(MarkedTriplet(triplet, MISSED, category=MISSED))
  for triplet, (category, related) in errors.predicted.items():
    marked.append(MarkedTriplet(triplet, SPURIOUS, category=category, related=related, score=scores.get(triplet)))
  return SentenceReport(gold.id, gold.tokens, gold_triplets, predicted, tuple(marked)), errors


def _analyze_file(label: str, source: str, gold: Sequence[Example], predicted: Sequence[Example], gold_source: str,
                  align: str) -> FileAnalysis:
  sources = {"gold_source": gold_source, "predicted_source": source}
  scores = evaluation.score(gold, predicted, align=align, **sources)  # also checks the alignment
  if align == "id":
    by_id = {example.id: example for example in predicted}
    aligned = [by_id[example.id] for example in gold]
  else:
    aligned = list(predicted)
  reports, counts, explained = [], dict.fromkeys(ERROR_CATEGORIES, 0), 0
  for gold_example, prediction in zip(gold, aligned):
    report, errors = _sentence_report(gold_example, prediction)
    reports.append(report)
    for category, _ in errors.predicted.values():
      counts[category] += 1
    counts[MISSED] += len(errors.missed)
    explained += len(errors.explained)
  count_buckets = [_count_bucket(len(set(example.triplets))) for example in gold]
  by_triplet_count = {}
  for bucket in (("0",) if "0" in count_buckets else ()) + TRIPLET_COUNT_BUCKETS:
    rows = [position for position, name in enumerate(count_buckets) if name == bucket]
    by_triplet_count[bucket] = (len(rows),
                                evaluation.score([gold[i] for i in rows], [aligned[i] for i in rows],
                                                 align="order", **sources))
  return FileAnalysis(label=label, source=source, scores=scores, error_counts=counts, explained_gold=explained,
                      sentences=tuple(reports), by_triplet_count=by_triplet_count,
                      by_aspect_length=_span_buckets(gold, aligned, "aspect", **sources),
                      by_opinion_length=_span_buckets(gold, aligned, "opinion", **sources))


def _difference(first: FileAnalysis, second: FileAnalysis) -> Difference:
  sentences = []
  for a, b in zip(first.sentences, second.sentences):
    a_set, b_set, gold = set(a.predicted), set(b.predicted), set(a.gold)
    if a_set == b_set:
      continue
    only_a = [t for t in a.predicted if t not in b_set]
    only_b = [t for t in b.predicted if t not in a_set]
    sentences.append(
        SentenceDifference(a.example_id, a.tokens, only_first_right=tuple(t for t in only_a if t in gold),
                           only_second_right=tuple(t for t in only_b if t in gold),
                           only_first_wrong=tuple(t for t in only_a if t not in gold),
                           only_second_wrong=tuple(t for t in only_b if t not in gold)))
  return Difference(first.label, second.label, tuple(sentences))


def analyze(gold: Sequence[Example], predictions: Sequence[Tuple[str, Sequence[Example]]],
            gold_source: str = "gold", align: str = "id") -> Analysis:
  """Analyzes one or more predictions files against the gold examples.

  Args:
    gold: the gold examples of a full split.
    predictions: (source, predicted examples) per predictions file; the source (its
      path) names the file in errors and in the report.
    gold_source: how errors and the report name the gold file.
    align: "id" pairs each prediction with the gold example of its id, "order" the i-th
      prediction with the i-th gold example (`evaluation.ALIGNMENTS`).

  Returns:
    The `Analysis` (files labelled A, B, ... in the order given).

  Raises:
    DataError: a file repeats an id, lacks a gold id, has an id the gold lacks, or has
      other tokens for a sentence, or (by order) has another number of records
      (`evaluation.score`'s checks).
    ValueError: no predictions file, or an unknown `align`.
  """
  if not predictions:
    raise ValueError("analyze needs at least one predictions file")
  files = tuple(
      _analyze_file(_label(position), source, gold, predicted, gold_source, align)
      for position, (source, predicted) in enumerate(predictions))
  differences = tuple(
      _difference(files[i], files[j]) for i in range(len(files)) for j in range(i + 1, len(files)))
  return Analysis(gold_source=gold_source, num_sentences=len(gold),
                  num_gold_triplets=sum(len(set(example.triplets)) for example in gold), files=files,
                  differences=differences)


def triplet_text(tokens: Sequence[str], triplet: Triplet) -> str:
  """`aspect words -> opinion words : SENTIMENT`, e.g. `pizza -> great : POSITIVE`."""
  words = lambda span: " ".join(tokens[span[0]:span[1]])
  return f"{words(triplet.aspect)} -> {words(triplet.opinion)} : {triplet.sentiment}"


# The summary tables, shared by the page and the Markdown.


@dataclasses.dataclass(frozen=True)
class Table:
  """A table of plain-text cells (escaped when rendered)."""

  key: str  # the HTML id
  title: str
  header: Tuple[str, ...]
  rows: Tuple[Tuple[str, ...], ...]


_PRF_HEADER = ("P", "R", "F1", "correct", "predicted", "gold")


def _prf_cells(counts: PRF) -> Tuple[str, ...]:
  return (f"{counts.precision:.2f}", f"{counts.recall:.2f}", f"{counts.f1:.2f}", str(counts.correct),
          str(counts.predicted), str(counts.gold))


def summary_tables(analysis: Analysis) -> List[Table]:
  """The scores, error, bucket and difference tables, in report order."""
  files = analysis.files
  tables = [
      Table("scores", "Scores", ("predictions", "file", "score") + _PRF_HEADER,
            tuple((f.label, f.source, name) + _prf_cells(f.scores[name]) for f in files for name in SCORE_NAMES))
  ]
  if len(files) > 1:
    tables.append(
        Table("scores-side-by-side", "Scores side by side", ("score", "metric") + tuple(f.label for f in files),
              tuple((name, metric) + tuple(f"{getattr(f.scores[name], attribute):.2f}" for f in files)
                    for name in SCORE_NAMES
                    for metric, attribute in (("P", "precision"), ("R", "recall"), ("F1", "f1")))))
  error_rows = [(CATEGORY_TITLES[category],) + tuple(str(f.error_counts[category]) for f in files)
                for category in ERROR_CATEGORIES]
  error_rows.append((EXPLAINED_GOLD_TITLE,) + tuple(str(f.explained_gold) for f in files))
  tables.append(Table("errors", "Error breakdown", ("category",) + tuple(f.label for f in files), tuple(error_rows)))
  tables.append(
      Table("by-triplet-count", "Triplet scores by gold triplets per sentence",
            ("gold triplets per sentence", "predictions", "sentences") + _PRF_HEADER,
            tuple((bucket, f.label, str(f.by_triplet_count[bucket][0])) +
                  _prf_cells(f.by_triplet_count[bucket][1]["triplet"])
                  for bucket in files[0].by_triplet_count for f in files)))
  for role in ("aspect", "opinion"):
    tables.append(
        Table(f"by-{role}-length", f"Triplet scores by {role} length", (f"{role} length (words)", "predictions") +
              _PRF_HEADER,
              tuple((bucket, f.label) + _prf_cells(getattr(f, f"by_{role}_length")[bucket]["triplet"])
                    for bucket in SPAN_LENGTH_BUCKETS for f in files)))
  if analysis.differences:
    tables.append(
        Table("differences", "Differences", ("pair", "differing sentences", "only first right",
                                             "only second right"),
              tuple((d.title, str(len(d.sentences)), str(sum(len(s.only_first_right) for s in d.sentences)),
                     str(sum(len(s.only_second_right) for s in d.sentences))) for d in analysis.differences)))
  return tables


def _file_lines(analysis: Analysis) -> List[str]:
  return [f"Gold: {analysis.gold_source} ({analysis.num_sentences} sentences, {analysis.num_gold_triplets} triplets)"
         ] + [f"{f.label}: {f.source}" for f in analysis.files]


def render_markdown(analysis: Analysis) -> str:
  """The summary as Markdown: the files, then every summary table."""
  cell = lambda text: text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")
  lines = ["# Triplet error analysis", ""]
  lines += [f"* {cell(line)}" for line in _file_lines(analysis)]
  for table in summary_tables(analysis):
    lines += ["", f"## {table.title}", "", "| " + " | ".join(table.header) + " |",
              "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in table.rows]
  return "\n".join(lines) + "\n"


# The page.

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.sentence { border-top: 1px solid #ddd; padding: 0.4em 0; }
.tokens { font-family: monospace; }
.triplet.correct .words { color: #1a7f37; }
.triplet.missed .words { color: #b35900; }
.triplet.spurious .words { color: #c62828; }
.note, .score, .id { color: #666; font-size: 90%; }
ul { margin: 0.2em 0; }
"""


def _e(text: object) -> str:
  return html.escape(str(text), quote=True)


def _html_table(table: Table) -> str:
  head = "".join(f"<th>{_e(name)}</th>" for name in table.header)
  body = "".join("<tr>" + "".join(f"<td>{_e(value)}</td>" for value in row) + "</tr>\n" for row in table.rows)
  return f'<table id="{_e(table.key)}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n'


def _span_text(span: Span) -> str:
  return f"words [{span[0]}, {span[1]})"


def _marked_item(tokens: Sequence[str], item: MarkedTriplet) -> str:
  notes = []
  if item.category is not None:
    notes.append(CATEGORY_TITLES[item.category])
  if item.related:
    notes.append(("gold: " if item.mark == SPURIOUS else "see predicted: ") +
                 "; ".join(triplet_text(tokens, t) for t in item.related))
  score = f' <span class="score">score {item.score:.4g}</span>' if item.score is not None else ""
  note = f' <span class="note">({_e(", ".join(notes))})</span>' if notes else ""
  return (f'<li class="triplet {item.mark}" data-category="{_e(item.category or "")}" '
          f'title="aspect {_span_text(item.triplet.aspect)}, opinion {_span_text(item.triplet.opinion)}">'
          f'<span class="words">{_e(triplet_text(tokens, item.triplet))}</span>{note}{score}</li>\n')


def _sentences_section(analysis: Analysis) -> str:
  parts = ['<section id="sentences">\n<h2>Sentences</h2>\n']
  for position, sentence in enumerate(analysis.files[0].sentences):
    tokens = sentence.tokens
    parts.append(f'<div class="sentence" data-id="{_e(sentence.example_id)}">\n'
                 f'<p><span class="id">{_e(sentence.example_id)}</span> '
                 f'<span class="tokens">{_e(" ".join(tokens))}</span></p>\n')
    for f in analysis.files:
      marked = f.sentences[position].marked
      items = "".join(_marked_item(tokens, item) for item in marked) or '<li class="none">no triplets</li>\n'
      parts.append(f'<div class="file" data-file="{_e(f.label)}"><b>{_e(f.label)}</b>\n<ul>\n{items}</ul></div>\n')
    parts.append("</div>\n")
  parts.append("</section>\n")
  return "".join(parts)


def _error_details(f: FileAnalysis) -> Table:
  rows = []
  for sentence in f.sentences:
    for item in sentence.marked:
      if item.category is not None:
        rows.append((CATEGORY_TITLES[item.category], sentence.example_id, triplet_text(sentence.tokens, item.triplet),
                     "; ".join(triplet_text(sentence.tokens, t) for t in item.related)))
  return Table(f"errors-{f.label}", f"Errors of {f.label} ({f.source})",
               ("category", "sentence", "triplet", "related gold"), tuple(rows))


def _difference_details(difference: Difference) -> Table:
  text = lambda sentence, triplets: "; ".join(triplet_text(sentence.tokens, t) for t in triplets)
  first, second = difference.first, difference.second
  return Table(f"differences-{first}-{second}", f"{difference.title}: sentences where the predictions differ",
               ("sentence", "text", f"only {first} right", f"only {second} right", f"only {first} wrong",
                f"only {second} wrong"),
               tuple((s.example_id, " ".join(s.tokens), text(s, s.only_first_right), text(s, s.only_second_right),
                      text(s, s.only_first_wrong), text(s, s.only_second_wrong)) for s in difference.sentences))


def render_html(analysis: Analysis) -> str:
  """The self-contained report page (inline CSS; no script, link or external resource)."""
  parts = [
      '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Triplet error analysis</title>\n'
      f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>Triplet error analysis</h1>\n<ul>\n"
  ]
  parts += [f"<li>{_e(line)}</li>\n" for line in _file_lines(analysis)]
  parts.append("</ul>\n")
  for table in summary_tables(analysis):
    parts.append(f"<h2>{_e(table.title)}</h2>\n{_html_table(table)}")
    if table.key == "errors":
      parts += [f"<h3>{_e(details.title)}</h3>\n{_html_table(details)}"
                for details in map(_error_details, analysis.files)]
    if table.key == "differences":
      parts += [f"<h3>{_e(details.title)}</h3>\n{_html_table(details)}"
                for details in map(_difference_details, analysis.differences)]
  parts.append(_sentences_section(analysis))
  parts.append("</body>\n</html>\n")
  return "".join(parts)

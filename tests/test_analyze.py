"""`python -m experiments.analyze` on hand-built gold and predictions with known errors.

The gold has five sentences and eight triplets; file A and file B each make known errors
of every category (the comments give each triplet's expected category). The expected
numbers below are worked out by hand from those comments.
"""

import html.parser
import json
import pathlib
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from d2e2s_jax import analysis
from d2e2s_jax.data.examples import Triplet

REPO = pathlib.Path(__file__).resolve().parents[1]

S1 = ["the", "pizza", "was", "great", "and", "cheap"]
S2 = ["the", "hot", "dogs", "are", "good", "but", "the", "service", "is", "slow"]
S3 = ["<b>", "fish", "&", "chips", "taste", "very", "fresh", "."]
S4 = ["staff", "was", "rude", "but", "food", "was", "tasty", "drinks", "cold", "prices", "high"]
S5 = ["ok", "."]
TOKENS = {"s1": S1, "s2": S2, "s3": S3, "s4": S4, "s5": S5}

# (aspect span, opinion span, sentiment) per sentence.
GOLD = {
    "s1": [((1, 2), (3, 4), "POSITIVE")],  # pizza -> great
    "s2": [((1, 3), (4, 5), "POSITIVE"), ((7, 8), (9, 10), "NEGATIVE")],  # hot dogs -> good, service -> slow
    "s3": [((1, 4), (5, 7), "POSITIVE")],  # fish & chips -> very fresh
    "s4": [((0, 1), (2, 3), "NEGATIVE"), ((4, 5), (6, 7), "POSITIVE"), ((7, 8), (8, 9), "NEGATIVE"),
           ((9, 10), (10, 11), "NEGATIVE")],
    "s5": [],
}
PREDICTIONS_A = {
    "s1": [((1, 2), (3, 4), "POSITIVE", 0.9)],  # correct
    "s2": [((1, 3), (4, 5), "NEGATIVE", 0.6),  # wrong sentiment (explains hot dogs -> good)
           ((7, 8), (9, 10), "NEGATIVE", 0.8)],  # correct
    "s3": [((1, 4), (6, 7), "POSITIVE", 0.7)],  # opinion boundary (explains the gold)
    "s4": [],  # all four gold triplets missed
    "s5": [((0, 1), (1, 2), "NEUTRAL", 0.55)],  # spurious
}
EXTRA_ASPECTS_A = {"s4": [(7, 8)]}  # a kept target span (drinks) in no triplet: a correct aspect term
PREDICTIONS_B = {
    "s1": [((0, 2), (3, 4), "POSITIVE")],  # aspect boundary ("the pizza")
    "s2": [((1, 3), (9, 10), "NEGATIVE"),  # wrong pairing
           ((7, 8), (4, 5), "POSITIVE")],  # wrong pairing (both gold triplets explained)
    "s3": [((1, 4), (5, 7), "POSITIVE")],  # correct
    "s4": [((4, 5), (6, 7), "POSITIVE"),  # correct
           ((1, 2), (2, 3), "NEGATIVE"),  # spurious ("was" does not overlap "staff")
           ((0, 1), (2, 3), "INVALID")],  # wrong sentiment; drinks and prices missed
    "s5": [((0, 1), (1, 2), "NEUTRAL")],  # spurious, the same as A's
}


def _record(example_id: str, triplets: Sequence[tuple], extra_aspects: Sequence[Tuple[int, int]] = ()) -> dict:
  """A D2E2S JSON record: one entity per distinct typed span, sentiments pointing at them."""
  entities: List[dict] = []

  def index_of(entity_type: str, span: Tuple[int, int]) -> int:
    entity = {"type": entity_type, "start": span[0], "end": span[1]}
    if entity not in entities:
      entities.append(entity)
    return entities.index(entity)

  sentiments = []
  for aspect, opinion, sentiment, *score in triplets:
    sentiments.append({"type": sentiment, "head": index_of("target", aspect), "tail": index_of("opinion", opinion)})
    if score:
      sentiments[-1]["score"] = score[0]
  for span in extra_aspects:
    index_of("target", span)
  return {"tokens": TOKENS[example_id], "entities": entities, "sentiments": sentiments, "orig_id": example_id}


def _write(path: pathlib.Path, by_id: Dict[str, list], extras: Optional[dict] = None) -> pathlib.Path:
  records = [_record(example_id, triplets, (extras or {}).get(example_id, ())) for example_id, triplets in by_id.items()]
  path.write_text(json.dumps(records), encoding="utf-8")
  return path


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "experiments.analyze", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=False)


class _Page(html.parser.HTMLParser):
  """Collects the tables (by id: header row, body rows of cell texts) and the triplet items."""

  def __init__(self):
    super().__init__()
    self.tables: Dict[str, List[List[str]]] = {}
    self.items: List[dict] = []  # {sentence, file, mark, category, words}
    self.tags: List[str] = []
    self._table: Optional[List[List[str]]] = None
    self._cell: Optional[List[str]] = None
    self._sentence = self._file = None
    self._item: Optional[dict] = None
    self._in_words = False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    self.tags.append(tag)
    classes = (attrs.get("class") or "").split()
    if tag == "table":
      self._table = self.tables.setdefault(attrs["id"], [])
    elif tag == "tr" and self._table is not None:
      self._table.append([])
    elif tag in ("td", "th") and self._table is not None:
      self._cell = []
    elif tag == "div" and "sentence" in classes:
      self._sentence = attrs["data-id"]
    elif tag == "div" and "file" in classes:
      self._file = attrs["data-file"]
    elif tag == "li" and "triplet" in classes:
      self._item = {"sentence": self._sentence, "file": self._file, "mark": classes[1],
                    "category": attrs["data-category"], "words": "", "text": ""}
    elif tag == "span" and self._item is not None and "words" in classes:
      self._in_words = True

  def handle_endtag(self, tag):
    if tag == "table":
      self._table = None
    elif tag in ("td", "th") and self._cell is not None:
      self._table[-1].append("".join(self._cell))
      self._cell = None
    elif tag == "li" and self._item is not None:
      self.items.append(self._item)
      self._item = None
    elif tag == "span":
      self._in_words = False

  def handle_data(self, data):
    if self._cell is not None:
      self._cell.append(data)
    if self._item is not None:
      self._item["text"] += data
      if self._in_words:
        self._item["words"] += data


def _rows(page: _Page, table: str, *key_columns: int) -> Dict[tuple, List[str]]:
  """The body rows of a table keyed by the cells of `key_columns`."""
  header, *rows = page.tables[table]
  del header
  return {tuple(row[i] for i in key_columns): row for row in rows}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  directory = tmp_path_factory.mktemp("analyze")
  gold = _write(directory / "gold.json", GOLD)
  first = _write(directory / "a.json", PREDICTIONS_A, EXTRA_ASPECTS_A)
  second = _write(directory / "b.json", PREDICTIONS_B)
  output = directory / "out" / "report.html"
  result = _run(f"--gold={gold}", f"--predictions={first}", f"--predictions={second}", f"--output={output}")
  assert result.returncode == 0, result.stderr
  text = output.read_text(encoding="utf-8")
  page = _Page()
  page.feed(text)
  return {"html": text, "page": page, "stdout": result.stdout, "paths": (str(first), str(second)),
          "output": output}


def test_scores_of_both_files(report):
  rows = _rows(report["page"], "scores", 0, 2)
  expected = {  # P, R, F1, correct, predicted, gold
      ("A", "triplet"): ["40.00", "25.00", "30.77", "2", "5", "8"],
      ("A", "aspect"): ["83.33", "62.50", "71.43", "5", "6", "8"],  # the extra target span counts
      ("A", "opinion"): ["60.00", "37.50", "46.15", "3", "5", "8"],
      ("B", "triplet"): ["25.00", "25.00", "25.00", "2", "8", "8"],
      ("B", "aspect"): ["62.50", "62.50", "62.50", "5", "8", "8"],
      ("B", "opinion"): ["85.71", "75.00", "80.00", "6", "7", "8"],
  }
  assert {key: row[3:] for key, row in rows.items()} == expected
  assert rows[("A", "triplet")][1] == report["paths"][0]
  side = _rows(report["page"], "scores-side-by-side", 0, 1)
  assert side[("triplet", "F1")][2:] == ["30.77", "25.00"]
  assert side[("opinion", "P")][2:] == ["60.00", "85.71"]


def test_error_breakdown_counts_each_category(report):
  rows = _rows(report["page"], "errors", 0)
  counts = {key[0]: row[1:] for key, row in rows.items()}
  assert counts == {
      "aspect boundary": ["0", "1"],
      "opinion boundary": ["1", "0"],
      "wrong sentiment": ["1", "1"],
      "wrong pairing": ["0", "2"],
      "missed": ["4", "2"],
      "spurious": ["1", "2"],
      analysis.EXPLAINED_GOLD_TITLE: ["2", "4"],
  }
  details = report["page"].tables["errors-B"][1:]
  assert ["wrong pairing", "s2", "hot dogs -> slow : NEGATIVE",
          "hot dogs -> good : POSITIVE; service -> slow : NEGATIVE"] in details
  assert ["wrong sentiment", "s4", "staff -> rude : INVALID", "staff -> rude : NEGATIVE"] in details
  assert ["missed", "s4", "prices -> high : NEGATIVE", ""] in details
  assert len(details) == 8  # 6 non-matching predictions + 2 missed


def test_bucket_tables(report):
  page = report["page"]
  count_rows = {key: row[2:] for key, row in _rows(page, "by-triplet-count", 0, 1).items()}
  assert count_rows == {  # sentences, P, R, F1, correct, predicted, gold
      ("0", "A"): ["1", "0.00", "0.00", "0.00", "0", "1", "0"],
      ("0", "B"): ["1", "0.00", "0.00", "0.00", "0", "1", "0"],
      ("1", "A"): ["2", "50.00", "50.00", "50.00", "1", "2", "2"],
      ("1", "B"): ["2", "50.00", "50.00", "50.00", "1", "2", "2"],
      ("2", "A"): ["1", "50.00", "50.00", "50.00", "1", "2", "2"],
      ("2", "B"): ["1", "0.00", "0.00", "0.00", "0", "2", "2"],
      ("3", "A"): ["0", "0.00", "0.00", "0.00", "0", "0", "0"],
      ("3", "B"): ["0", "0.00", "0.00", "0.00", "0", "0", "0"],
      ("4+", "A"): ["1", "0.00", "0.00", "0.00", "0", "0", "4"],
      ("4+", "B"): ["1", "33.33", "25.00", "28.57", "1", "3", "4"],
  }
  aspect_rows = {key: row[2:] for key, row in _rows(page, "by-aspect-length", 0, 1).items()}
  assert aspect_rows == {
      ("1", "A"): ["66.67", "33.33", "44.44", "2", "3", "6"],
      ("1", "B"): ["20.00", "16.67", "18.18", "1", "5", "6"],
      ("2", "A"): ["0.00", "0.00", "0.00", "0", "1", "1"],
      ("2", "B"): ["0.00", "0.00", "0.00", "0", "2", "1"],
      ("3+", "A"): ["0.00", "0.00", "0.00", "0", "1", "1"],
      ("3+", "B"): ["100.00", "100.00", "100.00", "1", "1", "1"],
  }
  opinion_rows = {key: row[2:] for key, row in _rows(page, "by-opinion-length", 0, 1).items()}
  assert opinion_rows[("1", "A")] == ["40.00", "28.57", "33.33", "2", "5", "7"]
  assert opinion_rows[("1", "B")] == ["14.29", "14.29", "14.29", "1", "7", "7"]
  assert opinion_rows[("2", "B")] == ["100.00", "100.00", "100.00", "1", "1", "1"]
  assert opinion_rows[("3+", "A")] == ["0.00", "0.00", "0.00", "0", "0", "0"]


def test_every_sentence_is_marked(report):
  items = report["page"].items
  marks = lambda sentence, file: [(i["words"], i["mark"], i["category"]) for i in items
                                  if (i["sentence"], i["file"]) == (sentence, file)]
  assert {i["sentence"] for i in items} == set(GOLD)
  assert marks("s1", "A") == [("pizza -> great : POSITIVE", "correct", "")]
  assert marks("s1", "B") == [("pizza -> great : POSITIVE", "missed", ""),
                              ("the pizza -> great : POSITIVE", "spurious", "aspect_boundary")]
  assert marks("s2", "B") == [("hot dogs -> good : POSITIVE", "missed", ""),
                              ("service -> slow : NEGATIVE", "missed", ""),
                              ("hot dogs -> slow : NEGATIVE", "spurious", "wrong_pairing"),
                              ("service -> good : POSITIVE", "spurious", "wrong_pairing")]
  assert marks("s3", "A") == [("fish & chips -> very fresh : POSITIVE", "missed", ""),
                              ("fish & chips -> fresh : POSITIVE", "spurious", "opinion_boundary")]
  assert [mark for _, mark, _ in marks("s4", "A")] == ["missed"] * 4
  assert {category for _, _, category in marks("s4", "A")} == {"missed"}
  assert marks("s5", "B") == [("ok -> . : NEUTRAL", "spurious", "spurious")]
  # A's file has scores; they are shown with the triplet.
  s2_item = next(i for i in items if (i["sentence"], i["file"], i["mark"]) == ("s2", "A", "spurious"))
  assert "score 0.6" in s2_item["text"] and "wrong sentiment" in s2_item["text"]


def test_differences_between_the_files(report):
  page = report["page"]
  assert _rows(page, "differences", 0)[("A vs B",)][1:] == ["4", "2", "2"]
  rows = _rows(page, "differences-A-B", 0)
  assert sorted(key[0] for key in rows) == ["s1", "s2", "s3", "s4"]  # s5: the same spurious triplet
  assert rows[("s1",)][2:] == ["pizza -> great : POSITIVE", "", "", "the pizza -> great : POSITIVE"]
  assert rows[("s2",)][2:] == ["service -> slow : NEGATIVE", "", "hot dogs -> good : NEGATIVE",
                               "hot dogs -> slow : NEGATIVE; service -> good : POSITIVE"]
  assert rows[("s3",)][2:4] == ["", "fish & chips -> very fresh : POSITIVE"]
  assert rows[("s4",)][2:] == ["", "food -> tasty : POSITIVE", "",
                               "was -> rude : NEGATIVE; staff -> rude : INVALID"]


def test_markdown_summary_on_stdout(report):
  lines = report["stdout"].splitlines()
  assert lines[0] == "# Triplet error analysis"
  for title in ("## Scores", "## Scores side by side", "## Error breakdown",
                "## Triplet scores by gold triplets per sentence", "## Triplet scores by aspect length",
                "## Triplet scores by opinion length", "## Differences"):
    assert title in lines
  cells = lambda line: [cell.strip() for cell in line.strip("|").split("|")]
  rows = [cells(line) for line in lines if line.startswith("| ")]
  assert ["A", report["paths"][0], "triplet", "40.00", "25.00", "30.77", "2", "5", "8"] in rows
  assert ["wrong pairing", "0", "2"] in rows
  assert ["4+", "B", "1", "33.33", "25.00", "28.57", "1", "3", "4"] in rows
  assert ["3+", "B", "100.00", "100.00", "100.00", "1", "1", "1"] in rows
  assert ["A vs B", "4", "2", "2"] in rows


def test_page_is_self_contained_and_escaped(report):
  text = report["html"]
  for external in ("http", "src=", "<link", "<script", "url("):
    assert external not in text
  assert "&lt;b&gt; fish &amp; chips taste very fresh ." in text
  assert "<b> fish" not in text
  assert [p.name for p in report["output"].parent.iterdir()] == ["report.html"]  # no temporary file left


def test_classification_order():
  t = lambda aspect, opinion, sentiment="POSITIVE": Triplet(aspect, opinion, sentiment)
  # Both spans exact but not paired in gold, while the aspect also overlaps a gold aspect
  # with the same opinion and sentiment: wrong pairing wins over aspect boundary.
  gold = [t((0, 2), (5, 6)), t((1, 2), (7, 8), "NEGATIVE")]
  errors = analysis.classify_errors(gold, [t((1, 2), (5, 6)), t((0, 1), (7, 8))])
  assert errors.predicted[t((1, 2), (5, 6))][0] == analysis.WRONG_PAIRING
  # A boundary error with the wrong sentiment as well is spurious; its gold is missed.
  assert errors.predicted[t((0, 1), (7, 8))] == (analysis.SPURIOUS, ())
  assert errors.missed == ()  # both gold triplets share a span with the wrong pairing
  errors = analysis.classify_errors([t((0, 1), (2, 3))], [t((0, 1), (2, 4), "NEGATIVE")])
  assert errors.predicted[t((0, 1), (2, 4), "NEGATIVE")] == (analysis.SPURIOUS, ())
  assert errors.missed == (t((0, 1), (2, 3)),) and errors.explained == {}


def test_one_id_less_file_aligned_by_order(tmp_path):
  gold = _write(tmp_path / "gold.json", GOLD)
  records = [_record(key, value, EXTRA_ASPECTS_A.get(key, ())) for key, value in PREDICTIONS_A.items()]
  for record in records:
    del record["orig_id"]  # as the released code writes them
  released = tmp_path / "released.json"
  released.write_text(json.dumps(records), encoding="utf-8")
  output = tmp_path / "report.html"
  result = _run(f"--gold={gold}", f"--predictions={released}", f"--output={output}", "--align=order")
  assert result.returncode == 0, result.stderr
  page = _Page()
  page.feed(output.read_text(encoding="utf-8"))
  assert _rows(page, "scores", 0, 2)[("A", "triplet")][3:] == ["40.00", "25.00", "30.77", "2", "5", "8"]
  assert _rows(page, "errors", 0)[("missed",)][1:] == ["4"]
  assert {i["sentence"] for i in page.items} == set(GOLD)  # the gold ids
  assert "differences" not in page.tables and "scores-side-by-side" not in page.tables
  assert "## Differences" not in result.stdout
  _one_error_line(_run(f"--gold={gold}", f"--predictions={released}", f"--output={output}"), str(released),
                  "has no gold example")


def _one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
  assert result.returncode == 1, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  assert result.stdout == ""


def test_missing_prediction_id_is_one_line_error(tmp_path):
  gold = _write(tmp_path / "gold.json", GOLD)
  first = _write(tmp_path / "a.json", PREDICTIONS_A)
  second = _write(tmp_path / "b.json", {key: value for key, value in PREDICTIONS_B.items() if key != "s3"})
  output = tmp_path / "report.html"
  result = _run(f"--gold={gold}", f"--predictions={first}", f"--predictions={second}", f"--output={output}")
  _one_error_line(result, str(second), "'s3'", str(gold))
  assert not output.exists()


def test_malformed_file_is_one_line_error(tmp_path):
  gold = _write(tmp_path / "gold.json", GOLD)
  bad = tmp_path / "bad.json"
  records = [_record(key, value) for key, value in PREDICTIONS_A.items()]
  records[2]["sentiments"][0]["tail"] = 7  # points at no entity
  bad.write_text(json.dumps(records), encoding="utf-8")
  output = tmp_path / "report.html"
  _one_error_line(_run(f"--gold={gold}", f"--predictions={bad}", f"--output={output}"), str(bad), "record 2")
  truncated = tmp_path / "truncated.json"
  truncated.write_text(json.dumps(records)[:40], encoding="utf-8")
  _one_error_line(_run(f"--gold={gold}", f"--predictions={truncated}", f"--output={output}"), str(truncated))
  _one_error_line(_run(f"--gold={tmp_path / 'absent.json'}", f"--predictions={bad}", f"--output={output}"),
                  "absent.json")
  assert not output.exists()


def test_unwritable_output_is_one_line_error(tmp_path):
  gold = _write(tmp_path / "gold.json", GOLD)
  first = _write(tmp_path / "a.json", PREDICTIONS_A)
  blocker = tmp_path / "not_a_directory"
  blocker.write_text("x")
  _one_error_line(_run(f"--gold={gold}", f"--predictions={first}", f"--output={blocker / 'report.html'}"),
                  "--output=")
  directory = tmp_path / "a_directory"
  directory.mkdir()
  _one_error_line(_run(f"--gold={gold}", f"--predictions={first}", f"--output={directory}"), str(directory))
  assert list(directory.iterdir()) == []

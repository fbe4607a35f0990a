"""Dependency parses: validating the D2E2S JSON parse and aligning it to the words.

The D2E2S JSON files carry a dependency parse made on the parser's own tokenization
(the words of the record's `pos` list), not on `tokens`. In the twelve benchmark splits
about a fifth of the parses differ from `tokens`: the parser dropped brackets, quotes and
dashes, split "8pm" into "8" "pm", or cut the sentence in two, in which case the second
part's entries restart at index 1 after a second ROOT entry. This module

* validates a source parse (`validate_dependency`): every entry is (relation, head,
  dependent), the entries read as consecutive segments (a new segment starts at each
  ROOT entry after the first) index every parse word exactly once, each segment is one
  tree with one root, and no index is outside the parse's words;
* maps it onto `tokens` (`word_level_parse`): each parse word is aligned to the token
  holding most of its characters, a token's head is the token of the nearest ancestor
  outside the token, and tokens the parse does not cover hang from ROOT (no edge).
  The released code does no such alignment: it indexes its sub-token matrix with the
  parse's indices as if they were token indices (`graphs.released_edges` reproduces
  that);
* parses examples that have no parse (the raw ASTE-V2 files) with a spaCy pipeline
  (`parse_with_spacy`), writing the result in the D2E2S layout.
"""

from __future__ import annotations

import collections
import difflib
import dataclasses
from typing import Any, List, Optional, Sequence, Tuple

from d2e2s_jax.data.examples import UNPARSED_RELATION, DataError, DependencyEntry, Example


def global_dependency(dependency: Sequence[DependencyEntry]) -> List[DependencyEntry]:
  """Renumbers a segmented parse so indices run over all parse words.

  A ROOT entry (head 0) after the first one starts a new segment whose indices restart
  at 1; its indices are shifted by the largest dependent index seen before it.

  Args:
    dependency: source entries (relation, head, dependent), 1-based, head 0 = ROOT.

  Returns:
    The entries with sentence-wide 1-based indices, in the source order.
  """
  offset = 0
  largest = 0
  renumbered = []
  for position, (relation, head, dependent) in enumerate(dependency):
    if head == 0 and position > 0:
      offset = largest
    new_head = head + offset if head != 0 else 0
    new_dependent = dependent + offset
    largest = max(largest, new_dependent)
    renumbered.append((relation, new_head, new_dependent))
  return renumbered


def validate_dependency(dependency: object, num_words: int, where: str) -> Tuple[DependencyEntry, ...]:
  """Checks a source parse and returns it as a tuple of typed entries.

  Args:
    dependency: the record's `dependency` value as read from JSON.
    num_words: number of words the parse indexes (its `pos` list, else the tokens).
    where: "file, record" prefix for error messages.

  Returns:
    The entries as (relation, head, dependent) tuples.

  Raises:
    DataError: on a malformed entry, an index outside 0..num_words, a word without or
      with two heads, a segment without exactly one root, or a cycle.
  """
  if not isinstance(dependency, list) or not dependency:
    raise DataError(f"{where}: 'dependency' must be a non-empty list of [relation, head, dependent]")
  entries = []
  for number, entry in enumerate(dependency):
    if (not isinstance(entry, (list, tuple)) or len(entry) != 3 or not isinstance(entry[0], str)
        or any(type(index) is not int for index in entry[1:])):
      raise DataError(f"{where}: dependency entry {number} is {entry!r}, expected [relation, head, dependent]")
    entries.append((entry[0], entry[1], entry[2]))
  renumbered = global_dependency(entries)
  head_of = {}
  for number, (_, head, dependent) in enumerate(renumbered):
    if not 1 <= dependent <= num_words or not 0 <= head <= num_words:
      raise DataError(f"{where}: dependency entry {number} {list(entries[number])} has an index outside "
                      f"the parse's {num_words} words")
    if dependent in head_of:
      raise DataError(f"{where}: word {dependent} of the parse has two heads")
    head_of[dependent] = head
  if len(head_of) != num_words:
    missing = sorted(set(range(1, num_words + 1)) - set(head_of))
    raise DataError(f"{where}: the parse gives no head to word(s) {missing}")
  _check_acyclic(head_of, where)
  return tuple(entries)


def _check_acyclic(head_of: dict, where: str) -> None:
  """Raises DataError when following heads from some word never reaches ROOT."""
  state = {}  # word -> 1 while on the current path, 2 when known to reach ROOT
  for start in head_of:
    path = []
    word = start
    while word != 0 and state.get(word) != 2:
      if state.get(word) == 1:
        raise DataError(f"{where}: the dependency heads form a cycle through word {word}")
      state[word] = 1
      path.append(word)
      word = head_of[word]
    for visited in path:
      state[visited] = 2


def align_words(tokens: Sequence[str], parse_words: Sequence[str]) -> List[Optional[int]]:
  """Maps each parse word to the 0-based token holding most of its characters.

  Characters are matched with `difflib` over the two concatenated strings, so dropped
  punctuation ("built-in" -> "builtin") and re-split words ("8pm" -> "8", "pm") align.

  Returns:
    For each parse word, a token index, or None when none of its characters match.
  """
  token_chars, token_owner = [], []
  for index, token in enumerate(tokens):
    token_chars.append(token)
    token_owner.extend([index] * len(token))
  parse_owner = []
  for index, word in enumerate(parse_words):
    parse_owner.extend([index] * len(word))
  matcher = difflib.SequenceMatcher(None, "".join(token_chars), "".join(parse_words), autojunk=False)
  votes = [collections.Counter() for _ in parse_words]
  for block in matcher.get_matching_blocks():
    for offset in range(block.size):
      votes[parse_owner[block.b + offset]][token_owner[block.a + offset]] += 1
  # most_common breaks ties by first insertion, i.e. the leftmost token.
  return [vote.most_common(1)[0][0] if vote else None for vote in votes]


def word_level_parse(tokens: Sequence[str], parse_words: Sequence[str],
                     dependency: Sequence[DependencyEntry]) -> Tuple[Tuple[int, ...], Tuple[str, ...]]:
  """Re-expresses a (validated) source parse over `tokens`.

  Args:
    tokens: the sentence's words.
    parse_words: the words the parse indexes.
    dependency: validated source entries.

  Returns:
    (heads, relations): per token, the 1-based head token (0 = ROOT) and the relation of
    the token's topmost parse word. Tokens no parse word aligns to get head 0 and
    relation `UNPARSED_RELATION`; a token whose contracted head would close a cycle (the
    alignment merged words from two subtrees) is attached to ROOT instead.
  """
  renumbered = global_dependency(dependency)
  head_of = {dependent: head for _, head, dependent in renumbered}
  relation_of = {dependent: relation for relation, _, dependent in renumbered}
  if tuple(parse_words) == tuple(tokens):
    token_of = list(range(len(tokens)))  # no alignment needed (and empty words stay put)
  else:
    token_of = align_words(tokens, parse_words)  # parse word (0-based) -> token or None
  heads = [0] * len(tokens)
  relations = [UNPARSED_RELATION] * len(tokens)
  assigned = [False] * len(tokens)
  for word in range(1, len(parse_words) + 1):
    token = token_of[word - 1]
    if token is None or assigned[token]:
      continue
    # The first parse word of a token, in sentence order, whose parent lies outside the
    # token is its top word; walk up past unaligned words and words of the same token.
    parent = head_of[word]
    if parent != 0 and token_of[parent - 1] == token:
      continue
    while parent != 0 and (token_of[parent - 1] is None or token_of[parent - 1] == token):
      parent = head_of[parent]
    heads[token] = 0 if parent == 0 else token_of[parent - 1] + 1
    relations[token] = relation_of[word]
    assigned[token] = True
  _break_cycles(heads, relations)
  return tuple(heads), tuple(relations)


def _break_cycles(heads: List[int], relations: List[str]) -> None:
  """Attaches to ROOT one token of every cycle among `heads`, in place."""
  for start in range(1, len(heads) + 1):
    seen = []
    word = start
    while word != 0 and word not in seen:
      seen.append(word)
      word = heads[word - 1]
    if word != 0:
      heads[word - 1] = 0
      relations[word - 1] = UNPARSED_RELATION


# spaCy refuses empty words; such a word is parsed as this placeholder.
_EMPTY_WORD_PLACEHOLDER = "_"


def parse_with_spacy(examples: Sequence[Example], nlp: Any) -> List[Example]:
  """Adds a dependency parse to examples with a spaCy pipeline that has a parser.

  The words are kept as they are (a pre-tokenized `spacy.tokens.Doc` goes through the
  pipeline), so the parse indexes `tokens` directly. The parse is stored as the D2E2S
  files store theirs: per sentence spaCy found, its ROOT entry first, then the other
  words in order, with indices restarting at 1 in each sentence.

  Args:
    examples: the examples (any existing parse is replaced).
    nlp: a loaded spaCy pipeline, e.g. `spacy.load("en_core_web_sm")` (not a project
      dependency: the caller installs and loads a model).

  Returns:
    New examples with `heads`, `relations`, `pos_tags`, `dependency` and `parse_words`.

  Raises:
    DataError: the pipeline returned a parse that is not one tree per sentence.
  """
  from spacy.tokens import Doc  # pylint: disable=g-import-not-at-top  # slow import, only needed here

  parsed = []
  for example in examples:
    words = [token if token.strip() else _EMPTY_WORD_PLACEHOLDER for token in example.tokens]
    doc = nlp(Doc(nlp.vocab, words=words))
    where = f"example {example.id}"
    if len(doc) != len(words):
      raise DataError(f"{where}: the spaCy pipeline changed the tokenization ({len(words)} -> {len(doc)} words)")
    entries = []
    for sentence in doc.sents:
      roots = [token for token in sentence if token.head.i == token.i]
      if len(roots) != 1:
        raise DataError(f"{where}: spaCy sentence at word {sentence.start} has {len(roots)} roots")
      entries.append(("ROOT", 0, roots[0].i - sentence.start + 1))
      for token in sentence:
        if token.head.i == token.i:
          continue
        if not sentence.start <= token.head.i < sentence.end:
          raise DataError(f"{where}: word {token.i} has its head outside its spaCy sentence")
        entries.append((token.dep_ or "dep", token.head.i - sentence.start + 1, token.i - sentence.start + 1))
    dependency = validate_dependency([list(entry) for entry in entries], len(words), where)
    heads, relations = word_level_parse(example.tokens, example.tokens, dependency)
    parsed.append(dataclasses.replace(example, heads=heads, relations=relations, dependency=dependency,
                                      parse_words=tuple(example.tokens),
                                      pos_tags=tuple(token.tag_ or token.pos_ or "X" for token in doc)))
  return parsed

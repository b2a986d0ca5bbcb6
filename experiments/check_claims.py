"""Every results file a document cites exists and records the commit the citation names.

  python -m experiments.check_claims [FILES]   # default: README.md, experiments/README.md, docs/*.md

A citation is ``experiments/results/<path> (commit <hex>)``, the path optionally in
backticks; a results file measured over several commits (a study resumed after a
commit) is cited with all of them, ``(commit <hex>, <hex>)``. Mentions in fenced code
blocks (commands) and image links are not citations. Exit status 1 and one line per
problem (``file:line: ...``); the rules are in ``experiments/README.md``
("Provenance").
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys

from experiments import common

MENTION = re.compile(r'experiments/results/[\w.\-/]*[\w\-]')
COMMIT = re.compile(
    r'^`?\s*\(commits? ([0-9a-fA-F]{7,40}(?:,\s*[0-9a-fA-F]{7,40})*)(, modified tree)?\)'
)
LINK_TARGET = re.compile(r'\]\([^)\s]*$')
DEFAULT_FILES = ('README.md', 'experiments/README.md', 'docs/*.md')


def citations(text: str):
  """``(line number, path, [cited commits] or None)`` of every results mention outside
  fenced code blocks and image links."""
  fenced = False
  for number, line in enumerate(text.splitlines(), 1):
    if line.lstrip().startswith('```'):
      fenced = not fenced
      continue
    if fenced:
      continue
    for m in MENTION.finditer(line):
      if LINK_TARGET.search(line[: m.start()]):  # an image or a link target
        continue
      cited = COMMIT.match(line[m.end() :])
      commits = None if cited is None else re.split(r',\s*', cited.group(1))
      yield number, m.group(0), commits, bool(cited and cited.group(2))


def _load(path: str):
  with open(path) as f:
    if path.endswith('.jsonl'):
      return [json.loads(line) for line in f if line.strip()]
    return json.load(f)


def _folder_provenance(folder: str):
  path = os.path.join(folder, 'provenance.json')
  return common.recorded_commits(_load(path)) if os.path.exists(path) else None


def _source(path: str) -> str | None:
  """The JSON or JSONL that records a non-JSON results file's provenance: the one beside
  it with its stem, or with the longest stem its own starts with (``cpu.jsonl`` for
  ``cpu_fid_vs_steps.png``)."""
  folder, name = os.path.split(path)
  stem = os.path.splitext(name)[0]
  best = None
  for candidate in sorted(os.listdir(folder)):
    base, ext = os.path.splitext(candidate)
    if ext not in ('.json', '.jsonl') or candidate == 'provenance.json':
      continue
    if stem == base or stem.startswith(base + '_'):
      if best is None or len(base) > len(os.path.splitext(best)[0]):
        best = candidate
  return None if best is None else os.path.join(folder, best)


def recorded(path: str) -> list:
  """The commits ``path`` records (one per row of a rows file; None: a row records
  none); a folder's ``provenance.json`` where the file itself records none."""
  if os.path.isdir(path):
    out = []
    for name in sorted(os.listdir(path)):
      if name.endswith(('.json', '.jsonl')):
        out += recorded(os.path.join(path, name))
    return out
  source = path if path.endswith(('.json', '.jsonl')) else _source(path)
  commits = common.recorded_commits(_load(source)) if source else [None]
  if all(c is None for c in commits):
    commits = _folder_provenance(os.path.dirname(path)) or commits
  return commits


def _dirty(path: str) -> bool:
  if os.path.isdir(path):
    names = [n for n in os.listdir(path) if n.endswith(('.json', '.jsonl'))]
    return any(_dirty(os.path.join(path, n)) for n in names)
  source = path if path.endswith(('.json', '.jsonl')) else _source(path)
  data = _load(source) if source else None
  if data is None or all(c is None for c in common.recorded_commits(data)):
    folder = os.path.join(os.path.dirname(path), 'provenance.json')
    data = _load(folder) if os.path.exists(folder) else data
  return data is not None and common.recorded_dirty(data)


def _same(cited: str, commit: str) -> bool:
  n = min(len(cited), len(commit))
  return n >= 7 and cited[:n].lower() == commit[:n].lower()


def check_file(doc: str, root: str = common.REPO) -> list:
  """The problems of one document, one line each."""
  problems = []
  with open(doc) as f:
    text = f.read()
  where = os.path.relpath(doc, root)
  for number, path, cited, modified in citations(text):
    at = f'{where}:{number}: {path}'
    full = os.path.join(root, path)
    if not os.path.exists(full):
      problems.append(f'{at}: no such file')
      continue
    if cited is None:
      problems.append(f'{at}: no "(commit <hex>)" after it')
      continue
    try:
      commits = recorded(full)
      dirty = modified and not _dirty(full)
    except (OSError, ValueError) as e:
      problems.append(f'{at}: unreadable ({type(e).__name__})')
      continue
    if not commits or any(c is None for c in commits):
      problems.append(f'{at}: the file records no commit (or not in every row)')
      continue
    unmatched = sorted({c[:7] for c in commits if not any(_same(x, c) for x in cited)})
    unused = [x for x in cited if not any(_same(x, c) for c in commits)]
    if unmatched or unused:
      have = ', '.join(sorted({c[:7] for c in commits}))
      problems.append(f'{at}: cites {", ".join(cited)}; the file records {have}')
    elif dirty:
      problems.append(f'{at}: says "modified tree"; the file records a clean one')
  return problems


def main(argv=None) -> int:
  args = list(sys.argv[1:] if argv is None else argv)
  patterns = args or [os.path.join(common.REPO, p) for p in DEFAULT_FILES]
  docs = sorted({d for p in patterns for d in (glob.glob(p) or [p])})
  problems = []
  for doc in docs:
    if not os.path.isfile(doc):
      problems.append(f'{doc}: no such document')
      continue
    problems += check_file(doc)
  for line in problems:
    print(line)
  cited = sum(1 for d in docs if os.path.isfile(d) for _ in citations(open(d).read()))
  print(
      f'{len(docs)} documents, {cited} citations, {len(problems)} problems',
      file=sys.stderr,
  )
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main())

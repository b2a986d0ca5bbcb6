"""The experiments' common module (timer, ratios, provenance, writers) and the claims
checker, with exact expected values."""

import json
import os
import re
import subprocess
import sys

import pytest

from experiments import check_claims
from experiments import common

REPO = common.REPO


# ------------------------------------------------------------------ the timer


def test_run_interleaved_rotates_order_and_times_every_round():
  calls, now = [], [0.0]
  cost = {'a': 1.0, 'b': 2.0, 'c': 4.0}

  def make(name):
    def fn():
      calls.append(name)
      now[0] += cost[name]

    return fn

  times = common.run_interleaved(
      {n: make(n) for n in cost}, rounds=4, warmup=1, clock=lambda: now[0]
  )
  assert calls[:3] == ['a', 'b', 'c']  # warm-up
  assert calls[3:] == ['a', 'b', 'c', 'b', 'c', 'a', 'c', 'a', 'b', 'a', 'b', 'c']
  assert times == {'a': [1.0] * 4, 'b': [2.0] * 4, 'c': [4.0] * 4}


def test_ratio_summary_takes_ratios_within_rounds():
  # Round 2 is slow for both (machine load): per-round ratios do not see it.
  times = {'one_stage': [1.0, 1.0, 3.0, 1.0, 1.0], 'two_stage': [1.5, 1.2, 4.5, 1.4, 1.3]}
  s = common.ratio_summary(times, 'one_stage', per_call=10, prefix='one_stage')
  assert s['one_stage']['ratio_to_one_stage_median'] == 1.0
  two = s['two_stage']
  assert two['ratio_to_one_stage_median'] == pytest.approx(1.4)
  assert two['ratio_to_one_stage_min'] == pytest.approx(1.2)
  assert two['ratio_to_one_stage_max'] == pytest.approx(1.5)
  # Step times are a call's seconds over its 10 steps, in ms.
  assert two['step_ms_median'] == pytest.approx(140.0)
  assert (two['step_ms_min'], two['step_ms_max']) == pytest.approx((120.0, 450.0))
  assert two['rounds'] == 5 and two['steps_per_call'] == 10
  assert common.spread([3, 1, 2]) == {'median': 2.0, 'min': 1.0, 'max': 3.0}
  with pytest.raises(ValueError, match='rounds'):
    common.per_round_ratios({'one_stage': [1.0, 1.0], 'two_stage': [1.0]}, 'one_stage')


# ------------------------------------------------------------------ provenance


def _git(repo, *args):
  subprocess.run(['git', *args], cwd=repo, check=True, capture_output=True)


def test_git_state_lists_every_modified_and_untracked_file(tmp_path, monkeypatch):
  repo = tmp_path / 'repo'
  for path in ('osgan_jax/a.py', 'configs/c.py', 'experiments/e.py', 'README.md'):
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text('x\n')
  _git(repo, 'init', '-q')
  _git(repo, 'add', '.')
  _git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'first')
  head = subprocess.run(
      ['git', 'rev-parse', 'HEAD'], cwd=repo, capture_output=True, text=True
  ).stdout.strip()
  monkeypatch.setattr(common, 'REPO', str(repo))
  monkeypatch.setattr(common, 'RESULTS', str(repo / 'experiments' / 'results'))
  assert common.git_state() == {
      'git_commit': head,
      'git_dirty': False,
      'git_modified': [],
      'git_untracked': [],
      'git_diff_sha256': None,
  }
  (repo / 'experiments' / 'results').mkdir()
  (repo / 'experiments' / 'results' / 'r.json').write_text('{}')
  state = common.git_state()
  assert state['git_dirty'] is False  # a results file is not a change of the code
  assert state['git_untracked'] == ['experiments/results/r.json']
  (repo / 'experiments' / 'e.py').write_text('y\n')
  (repo / 'configs' / 'c.py').write_text('y\n')
  (repo / 'osgan_jax' / 'new.py').write_text('y\n')
  state = common.git_state()
  assert state['git_dirty'] is True
  assert state['git_modified'] == ['configs/c.py', 'experiments/e.py']
  assert state['git_untracked'] == ['experiments/results/r.json', 'osgan_jax/new.py']
  digest = state['git_diff_sha256']
  assert len(digest) == 64 and common.git_state()['git_diff_sha256'] == digest
  (repo / 'osgan_jax' / 'new.py').write_text('z\n')
  assert common.git_state()['git_diff_sha256'] != digest
  assert common.short_rev(state) == head[:7] + '+dirty'


def test_provenance_record():
  prov = common.provenance('python -m experiments.speed --out /tmp/x')
  head = subprocess.run(
      ['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True, text=True
  ).stdout.strip()
  assert prov['git_commit'] == head and isinstance(prov['git_dirty'], bool)
  assert set(prov['versions']) >= {'python', 'jax', 'jaxlib', 'flax', 'optax', 'numpy'}
  assert all(prov['versions'][k] for k in ('jax', 'jaxlib', 'flax', 'optax', 'numpy'))
  assert prov['device'].startswith('cpu:') and prov['backend'] == 'cpu'
  assert prov['command'] == 'python -m experiments.speed --out /tmp/x'
  assert prov['date'].endswith('+00:00') and prov['machine']['cpu_count'] >= 1
  assert 'torch' in common.provenance('x', torch=True)['versions']
  assert common.command_line('experiments.device', ['--tiny', '--out', 'a b']) == (
      "python -m experiments.device --tiny --out 'a b'"
  )


def test_recorded_commits_of_old_and_new_files():
  assert common.recorded_commits({'provenance': {'git_commit': 'abc1234f'}}) == [
      'abc1234f'
  ]
  device = {'machine': {'git_commit': '142a0fd' + '0' * 33, 'git_modified': ['x.py']}}
  assert common.recorded_commits(device) == ['142a0fd' + '0' * 33]
  assert common.recorded_dirty(device) is True
  speed = [{'machine': {'git_commit': 'e36f5e4'}}, {'machine': {'date': 'no commit'}}]
  assert common.recorded_commits(speed) == ['e36f5e4', None]
  quality = [{'git_rev': 'fb4caa0'}, {'git_rev': 'ac916bf+dirty'}]
  assert common.recorded_commits(quality) == ['fb4caa0', 'ac916bf']
  assert common.recorded_dirty(quality) is True
  assert common.recorded_dirty([{'git_rev': 'fb4caa0'}]) is False
  assert common.recorded_commits({'platform': {'jax': '0.10.2'}}) == [None]


# ------------------------------------------------------------------ writers


def test_writers_round_trip(tmp_path):
  path = str(tmp_path / 'a' / 'r.json')
  record = {'provenance': {'git_commit': 'abc'}, 'rows': [{'x': 1, 'y': 2.5}, {'x': 3}]}
  csv_path = common.write_record(path, record, ('x', 'y'))
  assert json.load(open(path)) == record and not os.path.exists(path + '.tmp')
  assert open(csv_path).read().splitlines() == ['x,y', '1,2.5', '3,']
  rows = str(tmp_path / 'rows.jsonl')
  common.append_jsonl(rows, {'b': 1, 'a': 2})
  with open(rows, 'a') as f:
    f.write('{"partly written')  # an interrupted writer
  assert open(rows).readline() == '{"a": 2, "b": 1}\n'
  assert common.read_jsonl(rows) == [{'a': 2, 'b': 1}]
  assert common.read_jsonl(str(tmp_path / 'none.jsonl')) == []
  out = common.output_dir(None, 'test')
  assert os.path.isdir(out) and not out.startswith(REPO)
  assert common.output_dir(str(tmp_path / 'o'), 'test') == str(tmp_path / 'o')


def test_parse_overrides_and_tables():
  assert common.parse_overrides(['batch_size=64', 'data.name=folder', 'a.b=[1, 2]']) == {
      'batch_size': 64,
      'data.name': 'folder',
      'a.b': [1, 2],
  }
  with pytest.raises(ValueError, match='KEY=VALUE'):
    common.parse_overrides(['batch_size'])
  assert common.fmt(None) == '-' and common.fmt(1234.5678, 4) == '1235'
  assert (
      common.markdown_table(('a', 'b'), [(1, '-')])
      == '| a | b |\n| --- | --- |\n| 1 | - |'
  )


# ------------------------------------------------------------------ claims


def _fixture(root):
  res = root / 'experiments' / 'results'
  (res / 'device').mkdir(parents=True)
  (res / 'quality').mkdir()
  (res / 'loop').mkdir()
  json.dump({'machine': {'git_commit': '142a0fd' + 'a' * 33, 'git_modified': ['x']}},
            open(res / 'device' / 'gpu.json', 'w'))  # fmt: skip
  (res / 'device' / 'gpu.csv').write_text('model\n')
  rows = [{'git_rev': 'fb4caa0'}, {'git_rev': 'ac916bf'}]
  (res / 'quality' / 'cpu.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  (res / 'quality' / 'cpu_fid_vs_steps.png').write_bytes(b'png')
  (res / 'loop' / 'gradcheck.jsonl').write_text('{"ok": true}\n')
  json.dump(
      {'git_commit': 'deadbee' + 'b' * 33}, open(res / 'loop' / 'provenance.json', 'w')
  )


GOOD = """Numbers.

Source: experiments/results/device/gpu.json (commit 142a0fd, modified tree)
Also `experiments/results/device/gpu.csv` (commit 142a0fdaaaaaaa) and
experiments/results/quality/cpu.jsonl (commit fb4caa0, ac916bf); the plot
experiments/results/quality/cpu_fid_vs_steps.png (commits ac916bf, fb4caa0) and
experiments/results/loop/gradcheck.jsonl (commit deadbee).

![plot](experiments/results/quality/cpu_fid_vs_steps.png)

```bash
python -m experiments.speed --out experiments/results/speed
```
"""
BAD = {
    'experiments/results/device/gpu.json': 'no "(commit <hex>)" after it',
    'experiments/results/device/gpu.json (commit 1234567)': 'the file records 142a0fd',
    'experiments/results/device/nope.json (commit 142a0fd)': 'no such file',
    'experiments/results/quality/cpu.jsonl (commit fb4caa0)': 'the file records ac916bf',
    'experiments/results/quality/cpu.jsonl (commit fb4caa0, ac916bf, 1234567)': 'cites',
    'experiments/results/quality/cpu.jsonl (commit fb4caa0, ac916bf, modified tree)': (
        'a clean one'
    ),
    'experiments/results/quality (commit fb4caa0)': 'the file records ac916bf',
}


def test_check_claims_accepts_true_citations_and_reports_false_ones(tmp_path):
  _fixture(tmp_path)
  good = tmp_path / 'good.md'
  good.write_text(GOOD)
  assert check_claims.check_file(str(good), root=str(tmp_path)) == []
  for n, (line, message) in enumerate(BAD.items()):
    doc = tmp_path / f'bad{n}.md'
    doc.write_text(f'# A page\n\nSource: {line}\n')
    [problem] = check_claims.check_file(str(doc), root=str(tmp_path))
    assert problem.startswith(f'bad{n}.md:3: experiments/results/'), problem
    assert message in problem, (line, problem)


def test_check_claims_command_exits_1_with_one_line_per_problem(tmp_path):
  doc = tmp_path / 'bad.md'
  doc.write_text('x experiments/results/none.json (commit 1234567)\ny\n')
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.check_claims', str(doc)],
      cwd=REPO,
      capture_output=True,
      text=True,
  )
  assert result.returncode == 1
  assert result.stdout.splitlines() == [
      f'{os.path.relpath(doc, REPO)}:1: experiments/results/none.json: no such file'
  ]


@pytest.mark.parametrize('doc', ['experiments/README.md', 'README.md', 'docs/*.md'])
def test_documents_cite_what_the_results_files_record(doc):
  """Every results file the documents cite exists and records the cited commit."""
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.check_claims', os.path.join(REPO, doc)],
      cwd=REPO,
      capture_output=True,
      text=True,
  )
  assert result.returncode == 0, result.stdout


def test_startup_reads_the_lines_the_loop_writes():
  """experiments.startup parses the loop's own log lines: a renamed line would leave
  its table empty, so the patterns are checked against the loop's format strings."""
  from experiments import startup

  with open(os.path.join(REPO, 'osgan_jax', 'training', 'loop.py')) as f:
    loop = f.read()
  first = re.search(r"'(First step \(with compilation\) took %\.1f s)'", loop).group(1)
  assert startup.FIRST_STEP.search(first.replace('%.1f', '12.5')).group(1) == '12.5'
  cache = re.search(r"'(Compilation cache: %d programs loaded, %d compiled)'", loop)
  line = cache.group(1).replace('%d', '3', 1).replace('%d', '4', 1)
  assert startup.CACHE.search(line).groups() == ('3', '4')
  rows = [
      {'run': 'baseline abc', 'to_first_step_s': 100.0},
      {'run': 'current, cold cache', 'to_first_step_s': 60.0},
      {'run': 'current, warm cache', 'to_first_step_s': 20.0},
  ]
  lines = startup.table(rows).splitlines()
  assert lines[2:] == [
      '| baseline abc | 100.0 | 1.00 |',
      '| current, cold cache | 60.0 | 0.60 |',
      '| current, warm cache | 20.0 | 0.20 |',
  ]

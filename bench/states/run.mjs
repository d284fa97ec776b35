// Runs the benchmark definitions in aws-local-stepfunctions and, given the Tern results file
// (JSON lines from `cargo bench -p tern-states --bench states`), prints both side by side with
// the ratio. Usage: node run.mjs [rounds] [tern-results.jsonl]
import { readFileSync } from 'node:fs';
import { StateMachine } from 'aws-local-stepfunctions';

const here = new URL('.', import.meta.url);
const rounds = Number(process.argv[2] ?? 3);
const ternFile = process.argv[3];
// 1-based items: aws-local-stepfunctions 3.0.0 rejects a path that selects the number 0.
const items = Array.from({ length: 10000 }, (_, i) => i + 1);
const cases = [
  { name: 'loop', file: 'loop.asl.json', input: {} },
  { name: 'map', file: 'map.asl.json', input: { items } },
];

const tern = ternFile
  ? readFileSync(ternFile, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l))
  : [];

const rows = [];
for (const c of cases) {
  const definition = JSON.parse(readFileSync(new URL(c.file, here), 'utf8'));
  const machine = new StateMachine(definition);
  let best = Infinity;
  let output;
  for (let r = 0; r < rounds; r++) {
    const start = process.hrtime.bigint();
    output = await machine.run(c.input).result;
    best = Math.min(best, Number(process.hrtime.bigint() - start) / 1e9);
  }
  const ours = tern.filter((t) => t.case === c.name);
  // Both engines enter the same states for the same definition and input; Tern counts them.
  const transitions = ours[0]?.transitions;
  const theirs = transitions ? transitions / best : undefined;
  rows.push({ case: c.name, engine: 'aws-local-stepfunctions', seconds: best, transitions_per_second: theirs, output });
  for (const t of ours) {
    rows.push({ ...t, ratio: theirs ? t.transitions_per_second / theirs : undefined });
  }
}

const fmt = (n, d = 0) => (n === undefined ? '-' : n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d }));
console.log('case  engine                    seconds   transitions/s   vs aws-local-stepfunctions');
for (const r of rows) {
  console.log(
    `${r.case.padEnd(5)} ${r.engine.padEnd(25)} ${fmt(r.seconds, 3).padStart(7)}   ${fmt(r.transitions_per_second).padStart(13)}   ${r.ratio ? fmt(r.ratio, 1) + 'x' : ''}`,
  );
}
for (const r of rows) {
  if (JSON.stringify(r.output) !== JSON.stringify(rows.find((x) => x.case === r.case).output)) {
    console.error(`output mismatch in ${r.case}: ${JSON.stringify(r.output)}`);
    process.exitCode = 1;
  }
}

// Builds examples/kbqa/kb.tsv, the knowledge base of the question-answering demo, from the
// 300 Song ci (宋词三百首) of the npm package chinese-poetry@2.0.1 (MIT; the texts are
// centuries old and in the public domain). Run once, by hand; the output is committed:
//   npm pack chinese-poetry@2.0.1 && tar xzf chinese-poetry-2.0.1.tgz
//   node scripts/make-kbqa.mjs package/dist
// Each ci gives three triples about its opening line: who wrote it (作者), its tune (词牌),
// and the line after it (下句). Opening lines that two ci share are left out: a subject
// names one ci.
import { writeFileSync } from 'node:fs';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const dist = process.argv[2];
if (!dist) {
  console.error('usage: node scripts/make-kbqa.mjs <chinese-poetry>/dist');
  process.exit(2);
}
const ci = JSON.parse(readFileSync(join(dist, 'songci/宋词三百首.json'), 'utf8'));
const strip = (line) => line.replace(/\s+/g, '').replace(/[，。、；：？！,.;:?!]+$/u, '');
// the clauses of a ci, in order: split its lines at the punctuation that ends a clause
const clauses = (paragraphs) => paragraphs.join('').split(/[，。、；：？！]/u).map(strip).filter((c) => c.length > 0);
const bySubject = new Map();
for (const c of ci) {
  if (c.paragraphs.join('').includes('□')) continue;
  const parts = clauses(c.paragraphs);
  if (parts.length < 3) continue;
  // a subject of at least 4 characters: short opening clauses take the next one along
  let subject = parts[0];
  let next = 1;
  if (subject.length < 4) subject += parts[next++];
  const triples = [
    [subject, '作者', c.author],
    [subject, '词牌', c.rhythmic.replace(/[·・].*$/u, '')],
    [subject, '下句', parts[next]],
  ];
  bySubject.set(subject, bySubject.has(subject) ? null : triples);
}
const rows = [...bySubject.values()].filter((t) => t !== null).flat();
writeFileSync('examples/kbqa/kb.tsv', rows.map((r) => r.join('\t')).join('\n') + '\n');
console.log(`${rows.length / 3} subjects, ${rows.length} triples`);

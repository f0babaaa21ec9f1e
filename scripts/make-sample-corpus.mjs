// Builds data/sample/corpus.txt from the npm package chinese-poetry@2.0.1 (MIT; the texts
// are classical works in the public domain). Run once, by hand; the output is committed:
//   npm pack chinese-poetry@2.0.1 && tar xzf chinese-poetry-2.0.1.tgz
//   node scripts/make-sample-corpus.mjs package/dist
// Documents are separated by blank lines, one sentence or paragraph per line.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const dist = process.argv[2];
if (!dist) {
  console.error('usage: node scripts/make-sample-corpus.mjs <chinese-poetry>/dist');
  process.exit(2);
}
const TARGET_CHARS = 100_000;
const read = (file) => JSON.parse(readFileSync(join(dist, file), 'utf8'));
const clean = (line) => line.replace(/\s+/g, '').trim();

const documents = [];
for (const chapter of read('lunyu/lunyu.json')) documents.push(chapter.paragraphs.map(clean).filter(Boolean));
for (const ci of read('songci/宋词三百首.json')) if (!ci.paragraphs.join('').includes('□')) documents.push(ci.paragraphs.map(clean).filter(Boolean));
let chars = documents.flat().join('').length;
const seen = new Set(documents.map((d) => d.join('')));
for (const ci of read('songci/ci.song.0.json')) {
  if (chars >= TARGET_CHARS) break;
  const doc = ci.paragraphs.map(clean).filter(Boolean);
  const key = doc.join('');
  // □ marks characters lost from the source
  if (doc.length === 0 || seen.has(key) || key.includes('□')) continue;
  seen.add(key);
  documents.push(doc);
  chars += key.length;
}
writeFileSync('data/sample/corpus.txt', documents.map((d) => d.join('\n')).join('\n\n') + '\n');
console.log(`${documents.length} documents, ${chars} characters`);

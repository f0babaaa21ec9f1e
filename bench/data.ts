/**
 * npm run bench:data -- tokenizer throughput against @huggingface/tokenizers (pure JS, as
 * a BERT WordPiece tokenizer on the same vocab.txt and text), `prepare` throughput, and
 * what an L4-H256 MLM training step at seq 128 consumes on wasm: data preparation must
 * never be the bottleneck. Prints tables, the command to reproduce, and one JSON line.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tokenizer } from '@huggingface/tokenizers';
import { Command, Option } from 'commander';
import { selectBackend } from '../src/backend/index.js';
import { prepare } from '../src/data/prepare.js';
import { BertTokenizer } from '../src/data/tokenizer.js';
import { Vocab } from '../src/data/vocab.js';
import { SPECIAL_TOKENS } from '../src/data/vocab-builder.js';
import { buildTransformer, disposeTransformer } from '../src/model/build.js';
import { presetConfig } from '../src/model/config.js';
import { createOptimizer, VariableParameters } from '../src/optim/index.js';
import { PretrainingObjective } from '../src/train/step.js';
import { Trainer } from '../src/train/trainer.js';
import { median, mlmBatch, table } from './common.js';

interface Options {
  corpus: string;
  vocab: string;
  repeat: number;
  rounds: number;
  memoryRepeat: number;
  trainModel: string;
  trainVocab: number;
  trainSteps: number;
  batch: number;
  seq: number;
}

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const program = new Command('bench:data')
  .description('tokenizer MB/s vs @huggingface/tokenizers, prepare instances/s, training consumption')
  .option('--corpus <file>', 'text to tokenize and prepare', path.join(ROOT, 'data/sample/corpus.txt'))
  .option('--vocab <vocab.txt>', 'vocabulary', path.join(ROOT, 'data/sample/vocab.txt'))
  .addOption(new Option('--repeat <n>', 'tokenize the corpus this many times per round').default(10).argParser(Number))
  .addOption(new Option('--rounds <n>', 'measured rounds (median), each tokenizer alternately').default(5).argParser(Number))
  .addOption(new Option('--memory-repeat <n>', 'prepare the corpus repeated this many times to show memory stays flat').default(20).argParser(Number))
  .option('--train-model <preset>', 'model whose training step sets the consumption', 'L4-H256')
  .addOption(new Option('--train-vocab <n>', 'its vocabulary size').default(21128).argParser(Number))
  .addOption(new Option('--train-steps <n>', 'measured training steps (after one warm-up)').default(3).argParser(Number))
  .addOption(new Option('--batch <n>', 'sequences per training step').default(8).argParser(Number))
  .addOption(new Option('--seq <n>', 'sequence length of training and prepare').default(128).argParser(Number));

/** The peer: a BERT WordPiece tokenizer.json on the same vocabulary, as Hugging Face writes it. */
function peerTokenizer(vocab: Vocab): Tokenizer {
  const ids = Object.fromEntries(vocab.tokens.map((t, i) => [t, i]));
  const special = SPECIAL_TOKENS.filter((t) => t in ids);
  return new Tokenizer(
    {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: special.map((t) => ({ id: ids[t], content: t, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
      normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true },
      pre_tokenizer: { type: 'BertPreTokenizer' },
      post_processor: null,
      decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
      model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab: ids },
    },
    { do_lower_case: true },
  );
}

async function main(): Promise<void> {
  const opts = program.parse(process.argv).opts<Options>();
  const text = await readFile(opts.corpus, 'utf8');
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  const vocab = await Vocab.load(opts.vocab);
  const ours = new BertTokenizer(vocab);
  const peer = peerTokenizer(vocab);

  // the same ids, or the comparison means nothing
  let agree = 0;
  for (const line of lines) if (ours.tokenize(line).ids.join() === peer.encode(line, { add_special_tokens: false }).ids.join()) agree++;
  const megabytes = (opts.repeat * Buffer.byteLength(lines.join('\n'))) / 1e6;
  const time = (fn: (line: string) => unknown): number => {
    const t = performance.now();
    for (let r = 0; r < opts.repeat; r++) for (const line of lines) fn(line);
    return megabytes / ((performance.now() - t) / 1000);
  };
  const oursRates: number[] = [];
  const peerRates: number[] = [];
  time((l) => ours.tokenize(l)); // warm-up (and our character table)
  time((l) => peer.encode(l, { add_special_tokens: false }));
  for (let r = 0; r < opts.rounds; r++) {
    oursRates.push(time((l) => ours.tokenize(l)));
    peerRates.push(time((l) => peer.encode(l, { add_special_tokens: false })));
  }
  const tokenizer = { mbPerSec: Math.round(median(oursRates) * 100) / 100, peerMbPerSec: Math.round(median(peerRates) * 100) / 100 };
  table(`Tokenizer on ${path.basename(opts.corpus)} x ${opts.repeat} (${megabytes.toFixed(1)} MB per round), median of ${opts.rounds} rounds`, ['tokenizer', 'MB/s', 'same ids as ours'], [
    ['ours (src/data/tokenizer.ts)', tokenizer.mbPerSec.toFixed(2), '-'],
    ['@huggingface/tokenizers 0.2.0', tokenizer.peerMbPerSec.toFixed(2), `${agree}/${lines.length} lines`],
  ]);

  // prepare: mlm with whole-word masking (jieba), dynamic masking; once on the corpus, once on
  // it repeated, watching the process's resident memory
  const out = await mkdtemp(path.join(tmpdir(), 'bench-data-'));
  const run = async (corpusFile: string, name: string) => {
    let peakRss = process.memoryUsage().rss;
    const t = performance.now();
    const manifest = await prepare({
      corpus: [corpusFile], vocab: opts.vocab, out: path.join(out, name), task: 'mlm', maxLength: opts.seq, seed: 1, masking: 'dynamic', copies: 1, recordsPerShard: 10_000, documents: 'blank-line', lowerCase: true, force: false,
      onProgress: () => (peakRss = Math.max(peakRss, process.memoryUsage().rss)),
    });
    const seconds = (performance.now() - t) / 1000;
    const bytes = manifest.corpus.reduce((n, c) => n + c.bytes, 0);
    return { instancesPerSec: manifest.records / seconds, mbPerSec: bytes / 1e6 / seconds, corpusMB: bytes / 1e6, peakRssMB: peakRss / 2 ** 20 };
  };
  let once;
  let repeated;
  try {
    once = await run(opts.corpus, 'once');
    const big = path.join(out, 'repeated.txt');
    await writeFile(big, Array.from({ length: opts.memoryRepeat }, () => text.trimEnd()).join('\n\n') + '\n');
    repeated = await run(big, 'repeated');
  } finally {
    await rm(out, { recursive: true, force: true });
  }
  const prepareRate = repeated.instancesPerSec;
  table(`prepare (mlm, jieba whole words, dynamic masking, ${availableParallelism()} cores), max length ${opts.seq}`, ['corpus', 'MB', 'MB/s', 'instances/s', 'peak RSS MiB'], [
    [path.basename(opts.corpus), once.corpusMB.toFixed(1), once.mbPerSec.toFixed(2), once.instancesPerSec.toFixed(0), once.peakRssMB.toFixed(0)],
    [`the same x ${opts.memoryRepeat}`, repeated.corpusMB.toFixed(1), repeated.mbPerSec.toFixed(2), repeated.instancesPerSec.toFixed(0), repeated.peakRssMB.toFixed(0)],
  ]);

  // what training consumes: an MLM step on wasm at the same length
  await selectBackend('wasm');
  const model = buildTransformer(presetConfig(opts.trainModel, opts.trainVocab), { seed: 1 });
  const objective = new PretrainingObjective(model);
  const trainer = new Trainer({ objective, optimizer: createOptimizer({ type: 'adafactor' }), params: new VariableParameters(objective.weights), clipNorm: 1 });
  const times: number[] = [];
  for (let s = 0; s <= opts.trainSteps; s++) {
    const t = performance.now();
    await trainer.step(mlmBatch(s, opts.batch, opts.seq, opts.trainVocab), { dropoutSeed: s + 1 });
    if (s > 0) times.push(performance.now() - t);
  }
  disposeTransformer(model);
  const trainingInstancesPerSec = opts.batch / (median(times) / 1000);
  table(`Instances per second at length ${opts.seq}`, ['stage', 'instances/s', 'vs training'], [
    ['prepare (mlm, jieba whole words)', prepareRate.toFixed(0), `${(prepareRate / trainingInstancesPerSec).toFixed(0)}x`],
    [`training step, ${opts.trainModel}, wasm, batch ${opts.batch}`, trainingInstancesPerSec.toFixed(2), '1x'],
  ]);

  console.log(`\nreproduce: npm run bench:data -- ${process.argv.slice(2).join(' ')}`.trimEnd());
  console.log(JSON.stringify({ tokenizer, prepare: { instancesPerSec: Math.round(prepareRate), mbPerSec: Math.round(repeated.mbPerSec * 100) / 100, peakRssMiB: { [`${once.corpusMB.toFixed(1)}MB`]: Math.round(once.peakRssMB), [`${repeated.corpusMB.toFixed(1)}MB`]: Math.round(repeated.peakRssMB) } }, trainingInstancesPerSec: Math.round(trainingInstancesPerSec * 100) / 100 }));
}

await main();

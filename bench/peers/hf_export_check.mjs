// Our MLM output against an independent PyTorch BertForMaskedLM over what `pretrain convert --to
// safetensors` writes (hf_bert_mlm.py). Run by hand after `npm run build`, never by CI:
//   node bench/peers/hf_export_check.mjs
// Measured: max |ours - PyTorch| = 1.2e-8 over 6000 probabilities (L2-H128, vocab 500).
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { selectBackend } from '../../dist/src/backend/index.js';
import { buildTransformer } from '../../dist/src/model/build.js';
import { presetConfig } from '../../dist/src/model/config.js';
import { saveModel } from '../../dist/src/checkpoint/layers-model-io.js';
import { trainableWeights } from '../../dist/src/model/weights.js';
import { execFileSync } from 'node:child_process';
await selectBackend('cpu');
const work = mkdtempSync(join(tmpdir(), 'hf-check-'));
const [src, dst] = [join(work, 'tfjs'), join(work, 'hf')];
const config = presetConfig('L2-H128', 500, { hidden_dropout_prob: 0, attention_probs_dropout_prob: 0 });
const model = buildTransformer(config, { application: 'encoder', withMlm: true, seed: 5 });
let s = 7; const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296;
for (const w of trainableWeights(model)) w.variable.assign(tf.tensor(new Float32Array(w.variable.size).map(() => (next() - 0.5) * 0.2 + (w.name.endsWith('/gamma') ? 1 : 0)), w.variable.shape));
await saveModel(model, src);
const ids = [[2, 17, 99, 230, 41, 3], [2, 400, 5, 3, 77, 3]]; const seg = [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]];
const out = model.predict([tf.tensor2d(ids, [2, 6], 'int32'), tf.tensor2d(seg, [2, 6], 'int32')]);
const ours = out.dataSync();
execFileSync(process.execPath, [new URL('../../dist/src/cli/pretrain.js', import.meta.url).pathname, 'convert', '--from', 'tfjs', '--to', 'safetensors', src, dst, '--overwrite'], { stdio: 'inherit' });
const theirs = JSON.parse(execFileSync('/usr/bin/python3', [new URL('./hf_bert_mlm.py', import.meta.url).pathname, dst, JSON.stringify(ids), JSON.stringify(seg)], { encoding: 'utf8' }));
let worst = 0; for (let i = 0; i < ours.length; i++) worst = Math.max(worst, Math.abs(ours[i] - theirs[i]));
console.log(`values ${ours.length} vs ${theirs.length}; max |ours - PyTorch BertForMaskedLM| = ${worst.toExponential(2)}; hidden_act ${config.hidden_act}`);

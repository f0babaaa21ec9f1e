/**
 * Fine-tuning for classification: the training loop (the project's Trainer, so clipping,
 * recompute and micro-batches work as in pretraining), evaluation on the dev set after
 * every epoch, the best epoch kept (by dev accuracy, or macro-F1), and prediction.
 *
 * An output folder holds the best epoch's model (`model.json` + `weights.bin`, a tfjs
 * LayersModel), `labels.json` (the label names in id order) and `finetune.json` (how it was
 * trained, what `predict` needs: pairs or single sentences, the maximum length, the case).
 */
import { mkdir, readFile } from 'node:fs/promises';
import * as path from 'node:path';
import type * as tfl from '@tensorflow/tfjs-layers';
import { writeFileAtomically } from '../checkpoint/atomic-write.js';
import { loadModel, saveModel } from '../checkpoint/layers-model-io.js';
import type { BertTokenizer } from '../data/tokenizer.js';
import { createOptimizer, type OptimizerConfig, VariableParameters } from '../optim/index.js';
import { stepDropoutSeed, Trainer } from '../train/trainer.js';
import { checkSets, classificationBatch, type EncodedExample, encodeExamples, type Example, type ExampleSet, labelIds } from './data.js';
import { argmaxRows, type ClassificationMetrics, classificationMetrics } from './metrics.js';
import { buildClassifier, checkClassifier, ClassifierModelError } from './model.js';
import { ClassificationObjective } from './objective.js';
import { seededRandom } from '../data/masking.js';

export const FINETUNE_FORMAT = 'tfjs-pretrain-finetune/1';
export const LABELS_FILE = 'labels.json';
export const FINETUNE_FILE = 'finetune.json';

export type SelectBy = 'accuracy' | 'macro-f1';

export interface FinetuneOptions {
  /** The pretrained model (its MLM head, if any, is left out); shared, not copied. */
  base: tfl.LayersModel;
  /** Where the base came from, for finetune.json. */
  baseName: string;
  tokenizer: BertTokenizer;
  train: ExampleSet;
  dev: ExampleSet;
  test?: ExampleSet;
  epochs: number;
  batchSize: number;
  learningRate: number;
  /** Share of all steps spent warming the learning rate up from 0; it then decays linearly to 0. */
  warmup: number;
  weightDecay: number;
  maxLength: number;
  seed: number;
  /** Replaces the default AdamW + warm-up/decay. */
  optimizer?: OptimizerConfig;
  adversarial?: { type: 'fgm'; epsilon: number };
  recompute?: boolean;
  microBatches?: number;
  /** Global-norm clipping; 0 (the default) is off. */
  clipNorm?: number;
  selectBy?: SelectBy;
  out?: string;
  log?: (line: string) => void;
}

export interface EpochReport {
  epoch: number;
  steps: number;
  loss: number;
  trainAccuracy: number;
  /** Mean loss on the perturbed embedding (FGM only). */
  adversarialLoss?: number;
  dev: ClassificationMetrics;
  best: boolean;
  seconds: number;
}

export interface FinetuneReport {
  labels: string[];
  pairs: boolean;
  steps: number;
  selectBy: SelectBy;
  bestEpoch: number;
  dev: ClassificationMetrics;
  /** The best epoch's model on the test set. */
  test?: ClassificationMetrics;
  epochs: EpochReport[];
}

/** What finetune.json holds. */
export interface FinetuneConfigFile {
  format: typeof FINETUNE_FORMAT;
  task: 'classification';
  labels: string[];
  pairs: boolean;
  maxLength: number;
  lowerCase: boolean;
  base: string;
  selectBy: SelectBy;
  bestEpoch: number;
  dev: ClassificationMetrics;
  training: Record<string, unknown>;
}

function shuffled(n: number, rand: () => number): number[] {
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

/** The default optimizer: AdamW, linear warm-up over `warmupSteps`, then linear decay to 0 at `totalSteps`. */
export function defaultOptimizer(learningRate: number, weightDecay: number, warmupSteps: number, totalSteps: number): OptimizerConfig {
  const schedule: Record<string, number> = warmupSteps <= 0 ? { 0: 1, [totalSteps]: 0 } : warmupSteps >= totalSteps ? { [totalSteps]: 1 } : { [warmupSteps]: 1, [totalSteps]: 0 };
  return { type: 'adamw', learningRate, weightDecay, wrappers: [{ type: 'piecewiseLinear', schedule }] };
}

/** Class probabilities of encoded examples, row-major [examples, labels], in batches. */
export function predictProbabilities(objective: ClassificationObjective, encoded: readonly EncodedExample[], batchSize: number): Float32Array[] {
  const out: Float32Array[] = [];
  for (let start = 0; start < encoded.length; start += batchSize) {
    const order = Array.from({ length: Math.min(batchSize, encoded.length - start) }, (_, i) => start + i);
    const probs = objective.probabilities(classificationBatch(encoded, order));
    const width = probs.length / order.length;
    for (let i = 0; i < order.length; i++) out.push(probs.slice(i * width, (i + 1) * width));
  }
  return out;
}

function evaluate(objective: ClassificationObjective, encoded: readonly EncodedExample[], gold: Int32Array, labels: number, batchSize: number): ClassificationMetrics {
  const rows = predictProbabilities(objective, encoded, batchSize);
  const flat = new Float32Array(rows.length * labels);
  rows.forEach((r, i) => flat.set(r, i * labels));
  return classificationMetrics(gold, argmaxRows(flat, labels));
}

const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;

export async function finetune(options: FinetuneOptions): Promise<FinetuneReport> {
  const { tokenizer, train, dev, test, epochs, batchSize, maxLength, seed } = options;
  const log = options.log ?? (() => undefined);
  const selectBy = options.selectBy ?? 'accuracy';
  const labels = checkSets(train, [dev, ...(test ? [test] : [])]);
  const trainLabels = labelIds(train, labels, train.file);
  const devLabels = labelIds(dev, labels, train.file);
  const testLabels = test ? labelIds(test, labels, train.file) : undefined;
  const trainEncoded = encodeExamples(train.examples, tokenizer, maxLength);
  const devEncoded = encodeExamples(dev.examples, tokenizer, maxLength);
  const testEncoded = test ? encodeExamples(test.examples, tokenizer, maxLength) : undefined;

  const model = buildClassifier(options.base, { labels: labels.length, seed });
  const objective = new ClassificationObjective(model, options.adversarial ? { epsilon: options.adversarial.epsilon } : undefined);
  const stepsPerEpoch = Math.ceil(train.examples.length / batchSize);
  const totalSteps = epochs * stepsPerEpoch;
  const warmupSteps = Math.round(options.warmup * totalSteps);
  const optimizerConfig = options.optimizer ?? defaultOptimizer(options.learningRate, options.weightDecay, warmupSteps, totalSteps);
  const params = new VariableParameters(objective.weights);
  const trainer = new Trainer({
    objective,
    optimizer: createOptimizer(optimizerConfig),
    params,
    clipNorm: options.clipNorm ?? 0,
    recompute: options.recompute,
    microBatches: options.microBatches,
  });
  log(
    `fine-tuning ${options.baseName}: ${train.examples.length} training ${train.pairs ? 'pairs' : 'sentences'}, ${labels.length} labels (${labels.join(', ')}), ` +
      `${epochs} epoch(s) of ${stepsPerEpoch} steps (batch ${batchSize}, warm-up ${warmupSteps} steps), ${options.adversarial ? `FGM epsilon ${options.adversarial.epsilon}` : 'no adversarial training'}`,
  );

  // the data order of a seed: the project's one seeded generator, on a stream of its own
  const rand = seededRandom(seed, 0xf17e);
  const reports: EpochReport[] = [];
  let best: { score: number; epoch: number; dev: ClassificationMetrics; values: Float32Array[] } | undefined;
  let step = 0;
  const training = {
    epochs, batchSize, learningRate: options.learningRate, warmup: options.warmup, weightDecay: options.weightDecay, seed,
    adversarial: options.adversarial ?? null, recompute: options.recompute ?? false, microBatches: options.microBatches ?? 1,
    clipNorm: options.clipNorm ?? 0, optimizer: optimizerConfig, train: train.file, dev: dev.file,
  };
  for (let epoch = 1; epoch <= epochs; epoch++) {
    const started = performance.now();
    const order = shuffled(train.examples.length, rand);
    let lossSum = 0;
    let correct = 0;
    let advSum = 0;
    let advCount = 0;
    for (let start = 0; start < order.length; start += batchSize) {
      const slice = order.slice(start, start + batchSize);
      const batch = classificationBatch(trainEncoded, slice, trainLabels);
      const report = await trainer.step(batch, { step, dropoutSeed: stepDropoutSeed(seed, step) });
      lossSum += report.loss * slice.length;
      correct += report.accuracy * slice.length;
      const adversarialLoss = objective.lastAdversarialLoss;
      if (Number.isFinite(adversarialLoss)) {
        advSum += adversarialLoss * slice.length;
        advCount += slice.length;
      }
      step++;
    }
    const devMetrics = evaluate(objective, devEncoded, devLabels, labels.length, batchSize);
    const score = selectBy === 'accuracy' ? devMetrics.accuracy : devMetrics.macroF1;
    const improved = best === undefined || score > best.score;
    if (improved) {
      best = { score, epoch, dev: devMetrics, values: objective.weights.map((_, i) => params.read(i).slice()) };
      if (options.out) {
        await saveClassifier(model, options.out, {
          format: FINETUNE_FORMAT, task: 'classification', labels, pairs: train.pairs, maxLength, lowerCase: tokenizer.lowerCase,
          base: options.baseName, selectBy, bestEpoch: epoch, dev: devMetrics, training,
        });
      }
    }
    const report: EpochReport = {
      epoch, steps: step, loss: lossSum / train.examples.length, trainAccuracy: correct / train.examples.length,
      ...(advCount > 0 ? { adversarialLoss: advSum / advCount } : {}),
      dev: devMetrics, best: improved, seconds: (performance.now() - started) / 1000,
    };
    reports.push(report);
    log(
      `epoch ${epoch}/${epochs}: loss ${report.loss.toFixed(4)}${report.adversarialLoss === undefined ? '' : ` (adversarial ${report.adversarialLoss.toFixed(4)})`}, ` +
        `train accuracy ${pct(report.trainAccuracy)}; dev accuracy ${pct(devMetrics.accuracy)}, macro-F1 ${pct(devMetrics.macroF1)}` +
        `${improved ? ` (best${options.out ? `, saved to ${options.out}` : ''})` : ''}; ${report.seconds.toFixed(1)} s`,
    );
  }
  // the best epoch's weights, for the test set and for the caller
  best!.values.forEach((v, i) => params.write(i, v));
  const testMetrics = test ? evaluate(objective, testEncoded!, testLabels!, labels.length, batchSize) : undefined;
  if (testMetrics) log(`test (epoch ${best!.epoch}'s model): accuracy ${pct(testMetrics.accuracy)}, macro-F1 ${pct(testMetrics.macroF1)} over ${testMetrics.count} examples`);
  return {
    labels, pairs: train.pairs, steps: step, selectBy, bestEpoch: best!.epoch, dev: best!.dev,
    ...(testMetrics ? { test: testMetrics } : {}), epochs: reports,
  };
}

async function saveClassifier(model: tfl.LayersModel, dir: string, config: FinetuneConfigFile): Promise<void> {
  await mkdir(dir, { recursive: true });
  await saveModel(model, dir);
  await writeFileAtomically(path.join(dir, LABELS_FILE), (h) => h.writeFile(`${JSON.stringify(config.labels)}\n`));
  await writeFileAtomically(path.join(dir, FINETUNE_FILE), (h) => h.writeFile(`${JSON.stringify(config, null, 2)}\n`));
}

export interface LoadedClassifier {
  model: tfl.LayersModel;
  objective: ClassificationObjective;
  labels: string[];
  config: FinetuneConfigFile;
}

/** A folder written by `finetune`: the model, its labels and its settings, checked against each other. */
export async function loadClassifier(dir: string): Promise<LoadedClassifier> {
  const read = async (name: string): Promise<unknown> => {
    const file = path.join(dir, name);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      throw new ClassifierModelError(`${file} is missing: give the --out folder of pretrain finetune`);
    }
    try {
      return JSON.parse(text) as unknown;
    } catch (err) {
      throw new ClassifierModelError(`${file} is not valid JSON: ${(err as Error).message}`);
    }
  };
  const config = (await read(FINETUNE_FILE)) as FinetuneConfigFile;
  if (config?.format !== FINETUNE_FORMAT) throw new ClassifierModelError(`${path.join(dir, FINETUNE_FILE)} is not a ${FINETUNE_FORMAT} file`);
  const labels = await read(LABELS_FILE);
  if (!Array.isArray(labels) || labels.length < 2 || labels.some((l) => typeof l !== 'string')) {
    throw new ClassifierModelError(`${path.join(dir, LABELS_FILE)} must be a JSON array of at least 2 label strings`);
  }
  let model: tfl.LayersModel;
  try {
    model = await loadModel(dir);
  } catch (err) {
    throw new ClassifierModelError(`cannot load the model in ${dir}: ${(err as Error).message}`);
  }
  checkClassifier(model, labels.length, dir);
  return { model, objective: new ClassificationObjective(model), labels: labels as string[], config };
}

export interface Prediction {
  label: string;
  probabilities: Record<string, number>;
}

/** Predicted label and class probabilities of each example. */
export function predict(classifier: LoadedClassifier, tokenizer: BertTokenizer, examples: readonly Example[], batchSize: number): Prediction[] {
  const encoded = encodeExamples(examples, tokenizer, classifier.config.maxLength);
  return predictProbabilities(classifier.objective, encoded, batchSize).map((row) => {
    let best = 0;
    for (let c = 1; c < row.length; c++) if (row[c]! > row[best]!) best = c;
    return { label: classifier.labels[best]!, probabilities: Object.fromEntries(classifier.labels.map((l, c) => [l, row[c]!])) };
  });
}

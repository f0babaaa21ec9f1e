/**
 * A single-process training run on the built-in stand-in corpus: select a backend, build
 * the model, train with global-norm clipping and the configured optimizer (default Adam),
 * evaluate on held-out poems, save the model and the optimizer state.
 * No coordinator, no workers: this is what `coordinator start --local` runs.
 */
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type * as tfl from '@tensorflow/tfjs-layers';
import { type BackendChoice, BACKEND_CHOICES, selectBackend } from '../backend/index.js';
import { saveModel } from '../checkpoint/layers-model-io.js';
import { loadBuiltinCorpus, makeBatch, pretrainingBatches, seededRandom, splitCorpus } from '../data/builtin-corpus.js';
import { type Application, APPLICATIONS, buildTransformer, disposeTransformer } from '../model/build.js';
import { type BertConfig, ConfigError, parseBertConfig, presetConfig } from '../model/config.js';
import { createOptimizer, type OptimizerConfig, OptimizerConfigError, readOptimizerConfig, saveOptimizerState, VariableParameters } from '../optim/index.js';
import type { Optimizer } from '../optim/optimizer.js';
import { batchOf, checkApplication, DatasetError, datasetBatches, describeSplit, loadDataset, type PreparedDataset, splitByDocument } from '../data/dataset.js';
import { TFRecordError } from '../data/tfrecord.js';
import type { Batch } from '../batch.js';
import { PretrainingObjective } from './step.js';
import { stepDropoutSeed, Trainer } from './trainer.js';

/** A problem with what the user asked for (options, config file, backend): reported in one line, no stack. */
export class LocalRunError extends Error {
  override name = 'LocalRunError';
}

export interface LocalRunOptions {
  backend?: BackendChoice;
  /** Size preset `L<layers>-H<hidden>` (default L2-H128); ignored when a config is given. */
  preset?: string;
  /** A Google `bert_config.json`; its vocab_size must cover the built-in corpus's vocabulary. */
  bertConfigPath?: string;
  /** Train on a `pretrain prepare` output folder instead of the built-in corpus (its max length is the sequence length). */
  dataDir?: string;
  /** A config given directly (tests); vocab_size defaults to the corpus vocabulary. */
  bertConfig?: Omit<BertConfig, 'vocab_size'> & { vocab_size?: number };
  application?: Application;
  steps?: number;
  batchSize?: number;
  seqLength?: number;
  /** Learning rate of the default optimizer (Adam); ignored when `optimizer` is given. */
  learningRate?: number;
  /** The optimizer: a config object, inline JSON, or a JSON/YAML file path (see src/optim/config.ts). Default: Adam at `learningRate`. */
  optimizer?: OptimizerConfig | string;
  /** Global-norm clipping threshold; 0 turns clipping off. */
  clipNorm?: number;
  recompute?: boolean;
  microBatches?: number;
  seed?: number;
  /** Folder to save the trained model to (model.json + weights.bin); not saved when absent. Checked before training. */
  saveDir?: string;
  /** Replace a model already saved in `saveDir` (refused otherwise, before training). */
  overwrite?: boolean;
  /** Print a progress line every this many steps (and at the first and last step). */
  logEvery?: number;
  /** Where progress lines go; default stdout. */
  onLog?: (line: string) => void;
  /** Return the trained model (the caller disposes it) instead of disposing it. */
  keepModel?: boolean;
}

export interface LocalRunSummary {
  backend: string;
  application: Application;
  config: BertConfig;
  parameters: number;
  steps: number;
  /** Training loss of the first and of the last step. */
  firstLoss: number;
  lastLoss: number;
  /** Training loss of every step. */
  losses: number[];
  /** Held-out loss and accuracy before training and after. */
  initialEvalLoss: number;
  evalLoss: number;
  evalAccuracy: number;
  /** Held-out loss with the EMA weights, when the optimizer keeps an EMA. */
  emaEvalLoss?: number;
  /** The optimizer's composition, e.g. `adafactor > weightDecay`. */
  optimizer: string;
  /** Token positions (batch x length) per second of training, over all steps but the first. */
  tokensPerSecond: number;
  seconds: number;
  /** tf.memory().numTensors after the first and the last step: equal when nothing leaks. */
  tensorsAfterFirstStep: number;
  tensorsAfterLastStep: number;
  savedTo?: string;
  model?: tfl.LayersModel;
}

/**
 * Saving the trained model failed; it was saved to `savedTo`, a fresh temporary folder,
 * instead, so the training is not lost.
 */
export class SaveFailedError extends Error {
  override name = 'SaveFailedError';
  constructor(
    readonly wanted: string,
    readonly savedTo: string,
    reason: string,
  ) {
    super(`could not save the model to ${wanted} (${reason}); the trained model and optimizer state were saved to ${savedTo} instead`);
  }
}

/** The optimizer state's file name inside a saved model's folder. */
export const OPTIMIZER_STATE_FILE = 'optimizer.safetensors';

export const LOCAL_DEFAULTS = {
  backend: 'auto' as BackendChoice,
  preset: 'L2-H128',
  application: 'encoder' as Application,
  steps: 120,
  batchSize: 8,
  seqLength: 64,
  learningRate: 1e-3,
  clipNorm: 1.0,
  recompute: false,
  microBatches: 1,
  seed: 1,
  logEvery: 20,
};

async function readConfigFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new LocalRunError(code === 'ENOENT' ? `config file ${file} does not exist` : `cannot read config file ${file}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new LocalRunError(`config file ${file} is not valid JSON: ${(err as Error).message}`);
  }
}

function checkPositiveInt(name: string, value: number): void {
  if (!Number.isInteger(value) || value <= 0) throw new LocalRunError(`${name} must be a positive integer, got ${value}`);
}

async function resolveConfig(options: LocalRunOptions, vocab: { size: number; source: string }, seqLength: number, application: Application): Promise<BertConfig> {
  const vocabSize = vocab.size;
  let config: BertConfig;
  let source: string;
  try {
    if (options.bertConfigPath) {
      source = `config file ${options.bertConfigPath}`;
      config = parseBertConfig(await readConfigFile(options.bertConfigPath), options.bertConfigPath);
    } else if (options.bertConfig) {
      source = 'the given config';
      config = parseBertConfig({ vocab_size: vocabSize, ...options.bertConfig }, source);
    } else {
      const preset = options.preset ?? LOCAL_DEFAULTS.preset;
      source = `preset ${preset}`;
      config = presetConfig(preset, vocabSize);
    }
  } catch (err) {
    if (err instanceof ConfigError) throw new LocalRunError(err.message.replace(/:?\n\s*/g, (m) => (m.startsWith(':') ? ': ' : '; ')));
    throw err;
  }
  if (config.vocab_size < vocabSize) {
    throw new LocalRunError(`${source}: vocab_size ${config.vocab_size} is smaller than ${vocab.source} (${vocabSize} tokens)`);
  }
  if (config.max_position_embeddings < seqLength) {
    throw new LocalRunError(`${source}: max_position_embeddings ${config.max_position_embeddings} is shorter than the sequence length ${seqLength}`);
  }
  if (application === 'unilm' && config.type_vocab_size < 2) {
    throw new LocalRunError(`${source}: the unilm application needs type_vocab_size >= 2 (it has ${config.type_vocab_size})`);
  }
  return config;
}

function fmt(x: number, digits = 4): string {
  return Number.isFinite(x) ? x.toFixed(digits) : String(x);
}

/** A learning rate readable at any scale: 0.00100 would hide a warm-up's 2.5e-6 as 0.00. */
export function formatLearningRate(lr: number): string {
  if (lr === 0 || !Number.isFinite(lr)) return String(lr);
  return Math.abs(lr) < 0.01 ? lr.toExponential(2) : lr.toPrecision(3);
}

const MODEL_JSON = 'model.json';

/**
 * Checks before training that the model can be saved to `dir`: a folder (made if
 * missing) that is writable and holds no saved model, unless `overwrite`. A bad path
 * found after an hour of training would cost the hour.
 */
async function checkSaveDir(dir: string, overwrite: boolean): Promise<void> {
  const stat = await fs.stat(dir).catch(() => undefined);
  if (stat && !stat.isDirectory()) throw new LocalRunError(`cannot save to ${dir}: it is a file, not a folder; pass --save <folder>`);
  if (stat && !overwrite && (await fs.stat(path.join(dir, MODEL_JSON)).catch(() => undefined))) {
    throw new LocalRunError(`${dir} already holds a saved model; pass --overwrite to replace it, or another --save folder`);
  }
  const probe = path.join(dir, `.write-test-${process.pid}`);
  try {
    await fs.mkdir(dir, { recursive: true });
    await fs.writeFile(probe, '');
    await fs.rm(probe);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new LocalRunError(`cannot save to ${dir}: ${e.code === 'ENOTDIR' || e.code === 'EEXIST' ? 'a part of the path is a file' : (e.code ?? e.message)}; pass another --save folder`);
  }
}

async function saveAll(model: tfl.LayersModel, optimizer: Optimizer, dir: string): Promise<void> {
  await saveModel(model, dir);
  await saveOptimizerState(path.join(dir, OPTIMIZER_STATE_FILE), optimizer.getState());
}

/** Saves to `dir`, or, when that fails after all, to a new temporary folder (SaveFailedError says which). */
async function saveOrRescue(model: tfl.LayersModel, optimizer: Optimizer, dir: string): Promise<void> {
  try {
    await saveAll(model, optimizer, dir);
  } catch (err) {
    const rescue = await fs.mkdtemp(path.join(tmpdir(), 'tfjs-pretrain-model-'));
    await saveAll(model, optimizer, rescue);
    const e = err as NodeJS.ErrnoException;
    throw new SaveFailedError(dir, rescue, e.code ? `${e.code} at ${e.path ?? dir}` : e.message);
  }
}

export async function runLocal(options: LocalRunOptions = {}): Promise<LocalRunSummary> {
  const o = { ...LOCAL_DEFAULTS, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) } as typeof LOCAL_DEFAULTS & LocalRunOptions;
  const log = o.onLog ?? ((line: string) => console.log(line));
  if (!BACKEND_CHOICES.includes(o.backend)) throw new LocalRunError(`unknown backend "${String(o.backend)}"; use one of ${BACKEND_CHOICES.join(', ')}`);
  if (!APPLICATIONS.includes(o.application)) throw new LocalRunError(`unknown application "${String(o.application)}"; use one of ${APPLICATIONS.join(', ')}`);
  for (const [name, value] of [['steps', o.steps], ['batch size', o.batchSize], ['sequence length', o.seqLength], ['micro-batches', o.microBatches], ['log every', o.logEvery]] as const) {
    checkPositiveInt(name, value);
  }
  if (o.microBatches > o.batchSize) throw new LocalRunError(`micro-batches (${o.microBatches}) cannot exceed the batch size (${o.batchSize}): each micro-batch needs at least one sequence`);
  if (o.seqLength < 4) throw new LocalRunError(`sequence length must be at least 4, got ${o.seqLength}`);
  if (!(o.learningRate > 0) || !Number.isFinite(o.learningRate)) throw new LocalRunError(`learning rate must be a positive number, got ${o.learningRate}`);
  if (!(o.clipNorm >= 0) || !Number.isFinite(o.clipNorm)) throw new LocalRunError(`clip norm must be a number >= 0, got ${o.clipNorm}`);
  if (!Number.isInteger(o.seed) || o.seed < 0) throw new LocalRunError(`seed must be a non-negative integer, got ${o.seed}`);

  let data: PreparedDataset | undefined;
  if (o.dataDir) {
    try {
      data = await loadDataset(o.dataDir);
      checkApplication(data.manifest, o.application, o.dataDir);
      // the model's attention mask reads token id 0 as padding (Input-Token's contract)
      const pad = data.manifest.vocab.specials.pad;
      if (pad !== 0) throw new DatasetError(`the data in ${o.dataDir} pads with token id ${pad}, but the model reads id 0 as padding: put [PAD] on the first line of vocab.txt and run \`pretrain prepare\` again`);
    } catch (err) {
      if (err instanceof DatasetError || err instanceof TFRecordError) throw new LocalRunError(err.message);
      throw err;
    }
  }
  const corpus = data ? undefined : loadBuiltinCorpus();
  const seqLength = data ? data.manifest.maxLength : o.seqLength;
  const vocab = data ? { size: data.manifest.vocab.size, source: `the vocabulary of the data in ${o.dataDir}` } : { size: corpus!.vocab.size, source: "the built-in corpus's vocabulary" };
  const config = await resolveConfig(o, vocab, seqLength, o.application);
  if (o.saveDir) await checkSaveDir(o.saveDir, o.overwrite ?? false);

  let backend;
  try {
    backend = await selectBackend(o.backend);
  } catch (err) {
    throw new LocalRunError((err as Error).message);
  }
  log(`backend: ${backend.description}`);

  let batches: Iterator<Batch>;
  let evalBatch: Batch;
  let dataLine: string;
  if (data) {
    const split = splitByDocument(data.records);
    batches = datasetBatches(data, split.train, o.application, o.batchSize, o.seed);
    // held-out records, MLM masked with a fixed seed: the same evaluation before and after
    evalBatch = batchOf(data, (split.heldOut.length > 0 ? split.heldOut : split.train).slice(0, 64), o.application, o.seed ^ 0x5eed, 0);
    const m = data.manifest;
    dataLine = `data: ${o.dataDir} (${m.task}${m.masking ? `, ${m.masking.mode} masking` : ''}), ${describeSplit(split)}`;
  } else {
    const { train, heldOut } = splitCorpus(corpus!);
    batches = pretrainingBatches(corpus!.vocab, train, { application: o.application, batchSize: o.batchSize, length: o.seqLength, seed: o.seed });
    // MLM: each held-out poem four times with different masks, for a steadier estimate
    const evalTexts = o.application === 'encoder' ? [...heldOut, ...heldOut, ...heldOut, ...heldOut] : heldOut;
    evalBatch = makeBatch(corpus!.vocab, evalTexts, { application: o.application, length: o.seqLength, seed: o.seed }, seededRandom(o.seed ^ 0x5eed));
    dataLine = `data: built-in corpus (stand-in), ${train.length} training / ${heldOut.length} held-out poems`;
  }

  let optimizer: Optimizer;
  try {
    const optimizerConfig = o.optimizer === undefined ? { type: 'adam' as const, learningRate: o.learningRate } : typeof o.optimizer === 'string' ? await readOptimizerConfig(o.optimizer) : o.optimizer;
    optimizer = createOptimizer(optimizerConfig);
  } catch (err) {
    if (err instanceof OptimizerConfigError) throw new LocalRunError(err.message.replace(/:?\n\s*/g, (m) => (m.startsWith(':') ? ': ' : '; ')));
    throw err;
  }

  const model = buildTransformer(config, { application: o.application, withMlm: true, seed: o.seed });
  const objective = new PretrainingObjective(model);
  const parameters = objective.weights.reduce((n, w) => n + w.shape.reduce((a, b) => a * b, 1), 0);
  log(
    `model: ${o.application}, ${config.num_hidden_layers} layers, hidden ${config.hidden_size}, ${config.num_attention_heads} heads, ` +
      `vocab ${config.vocab_size}, ${(parameters / 1e6).toFixed(2)}M parameters`,
  );
  log(
    `${dataLine}; batch ${o.batchSize} x ${data ? `up to ${seqLength} (each batch padded to its longest sequence)` : seqLength}, ` +
      `${o.steps} steps, clip ${o.clipNorm || 'off'}${o.recompute ? ', recompute' : ''}${o.microBatches > 1 ? `, ${o.microBatches} micro-batches` : ''}, seed ${o.seed}`,
  );

  log(`optimizer: ${optimizer.description}, learning rate ${formatLearningRate(optimizer.currentLearningRate)} at step 0`);
  log(
    `columns: loss, acc, tokens/s: over the steps since the previous line; grad-norm: global norm of the last step's gradients before clipping; ` +
      `lr: of the last update; tensors: live tfjs tensors (unchanged from line to line unless something leaks)`,
  );
  const params = new VariableParameters(objective.weights);
  const trainer = new Trainer({ objective, optimizer, params, clipNorm: o.clipNorm, recompute: o.recompute, microBatches: o.microBatches });
  const initial = objective.evaluate(evalBatch);
  const losses: number[] = [];
  let tensorsAfterFirstStep = 0;
  let tensorsAfterLastStep = 0;
  let timedSeconds = 0;
  let timedTokens = 0;
  let window = { loss: 0, accuracy: 0, steps: 0, seconds: 0, tokens: 0 };
  const started = performance.now();
  try {
    for (let step = 1; step <= o.steps; step++) {
      const batch = batches.next().value;
      const t0 = performance.now();
      const result = await trainer.step(batch, { step, dropoutSeed: stepDropoutSeed(o.seed, step) });
      const seconds = (performance.now() - t0) / 1000;
      const tokens = batch.batchSize * batch.length;
      if (step > 1 || o.steps === 1) {
        timedSeconds += seconds;
        timedTokens += tokens;
      }
      losses.push(result.loss);
      window = { loss: window.loss + result.loss, accuracy: window.accuracy + result.accuracy, steps: window.steps + 1, seconds: window.seconds + seconds, tokens: window.tokens + tokens };
      const numTensors = tf.memory().numTensors;
      if (step === 1) tensorsAfterFirstStep = numTensors;
      tensorsAfterLastStep = numTensors;
      if (step === 1 || step % o.logEvery === 0 || step === o.steps) {
        log(
          `step ${String(step).padStart(String(o.steps).length)}/${o.steps}  loss ${fmt(window.loss / window.steps)}  acc ${fmt(window.accuracy / window.steps, 3)}  ` +
            `grad-norm ${fmt(result.gradNorm, 3)}  lr ${formatLearningRate(result.lr)}  tokens/s ${Math.round(window.tokens / window.seconds)}  tensors ${numTensors}`,
        );
        window = { loss: 0, accuracy: 0, steps: 0, seconds: 0, tokens: 0 };
      }
    }
    const final = objective.evaluate(evalBatch);
    let emaEvalLoss: number | undefined;
    if (optimizer.keepsAverage && optimizer.completedSteps > 0) {
      optimizer.applyAverage(params);
      emaEvalLoss = objective.evaluate(evalBatch).loss;
      optimizer.restoreTrained(params);
    }
    const summary: LocalRunSummary = {
      backend: backend.name,
      application: o.application,
      config,
      parameters,
      steps: o.steps,
      firstLoss: losses[0]!,
      lastLoss: losses[losses.length - 1]!,
      losses,
      initialEvalLoss: initial.loss,
      evalLoss: final.loss,
      evalAccuracy: final.accuracy,
      emaEvalLoss,
      optimizer: optimizer.description,
      tokensPerSecond: timedTokens / timedSeconds,
      seconds: (performance.now() - started) / 1000,
      tensorsAfterFirstStep,
      tensorsAfterLastStep,
    };
    log(
      `eval on held-out data (${final.targets} targets): loss ${fmt(initial.loss)} -> ${fmt(final.loss)}, acc ${fmt(initial.accuracy, 3)} -> ${fmt(final.accuracy, 3)}`,
    );
    if (emaEvalLoss !== undefined) log(`eval with the EMA weights: loss ${fmt(emaEvalLoss)}`);
    if (tensorsAfterLastStep !== tensorsAfterFirstStep) {
      log(`warning: tf.memory().numTensors went from ${tensorsAfterFirstStep} after step 1 to ${tensorsAfterLastStep}: tensors leak`);
    }
    if (o.saveDir) {
      await saveOrRescue(model, optimizer, o.saveDir);
      summary.savedTo = o.saveDir;
      log(`saved model and optimizer state to ${o.saveDir} (model.json + weights.bin, ${OPTIMIZER_STATE_FILE})`);
    }
    if (o.keepModel) summary.model = model;
    return summary;
  } finally {
    if (!o.keepModel) disposeTransformer(model);
  }
}

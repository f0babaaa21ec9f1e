import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import '../model/layers/index.js';
import { writeFileAtomically } from './atomic-write.js';

const MODEL_FILE = 'model.json';
const WEIGHTS_FILE = 'weights.bin';

function toArrayBuffer(data: tf.io.WeightData): ArrayBuffer {
  if (!Array.isArray(data)) return data;
  const total = data.reduce((n, b) => n + b.byteLength, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const b of data) {
    out.set(new Uint8Array(b), offset);
    offset += b.byteLength;
  }
  return out.buffer;
}

async function writeAtomically(file: string, data: string | Uint8Array): Promise<void> {
  await writeFileAtomically(file, (handle) => handle.writeFile(data));
}

/** A weights path from a model.json must stay inside the model's folder. */
function weightsPath(dir: string, relative: string): string {
  if (relative !== path.basename(relative) || relative === '..' || relative === '.') {
    throw new Error(`${path.join(dir, MODEL_FILE)}: weights path "${relative}" leaves the model folder; refusing to read it`);
  }
  return path.join(dir, relative);
}

/**
 * A tf.io handler for the standard tfjs LayersModel format (model.json + weights.bin)
 * on the local file system, without tfjs-node. Weights are written before model.json,
 * each atomically, so a model.json that exists always points at complete weights.
 */
export function fileSystemModelIO(dir: string): tf.io.IOHandler {
  return {
    async save(artifacts: tf.io.ModelArtifacts): Promise<tf.io.SaveResult> {
      if (artifacts.modelTopology instanceof ArrayBuffer) throw new Error('binary model topologies are not supported');
      await fs.mkdir(dir, { recursive: true });
      const weights = artifacts.weightData ? toArrayBuffer(artifacts.weightData) : new ArrayBuffer(0);
      await writeAtomically(path.join(dir, WEIGHTS_FILE), new Uint8Array(weights));
      const modelJson = {
        modelTopology: artifacts.modelTopology,
        format: artifacts.format ?? 'layers-model',
        generatedBy: artifacts.generatedBy,
        convertedBy: artifacts.convertedBy ?? null,
        weightsManifest: [{ paths: [WEIGHTS_FILE], weights: artifacts.weightSpecs ?? [] }],
      };
      await writeAtomically(path.join(dir, MODEL_FILE), JSON.stringify(modelJson));
      return { modelArtifactsInfo: tf.io.getModelArtifactsInfoForJSON(artifacts) };
    },

    async load(): Promise<tf.io.ModelArtifacts> {
      const file = path.join(dir, MODEL_FILE);
      let json: { modelTopology?: object; weightsManifest?: tf.io.WeightsManifestConfig; format?: string; generatedBy?: string; convertedBy?: string | null };
      try {
        json = JSON.parse(await fs.readFile(file, 'utf8')) as typeof json;
      } catch (err) {
        throw new Error(`cannot read model ${file}: ${(err as Error).message}`);
      }
      if (!json.modelTopology || !Array.isArray(json.weightsManifest)) {
        throw new Error(`${file} is not a tfjs LayersModel (no modelTopology or weightsManifest)`);
      }
      const weightSpecs: tf.io.WeightsManifestEntry[] = [];
      const buffers: Uint8Array[] = [];
      for (const group of json.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const p of group.paths) buffers.push(await fs.readFile(weightsPath(dir, p)));
      }
      const weightData = toArrayBuffer(buffers.map((b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer));
      return {
        modelTopology: json.modelTopology,
        weightSpecs,
        weightData,
        format: json.format,
        generatedBy: json.generatedBy,
        convertedBy: json.convertedBy ?? undefined,
      };
    },
  };
}

export async function saveModel(model: tfl.LayersModel, dir: string): Promise<void> {
  await model.save(fileSystemModelIO(dir));
}

export async function loadModel(dir: string): Promise<tfl.LayersModel> {
  return tfl.loadLayersModel(fileSystemModelIO(dir));
}

import { readSafetensors, writeSafetensors } from '../checkpoint/safetensors.js';
import { OPTIMIZER_STATE_FORMAT, OptimizerError, type OptimizerState } from './optimizer.js';

/**
 * Saves an optimizer state as one safetensors file: every slot a tensor named
 * `<parameter>#<component>/<slot>`, the step counters and composition in its metadata.
 */
export async function saveOptimizerState(file: string, state: OptimizerState): Promise<void> {
  await writeSafetensors(file, state.slots, {
    format: state.format,
    components: JSON.stringify(state.components),
    iterations: String(state.iterations),
    microSteps: String(state.microSteps),
  });
}

export async function loadOptimizerState(file: string): Promise<OptimizerState> {
  const { tensors, metadata } = await readSafetensors(file);
  if (metadata.format !== OPTIMIZER_STATE_FORMAT) {
    throw new OptimizerError(`${file} is not an optimizer state of this program (format ${metadata.format ?? 'missing'}, expected ${OPTIMIZER_STATE_FORMAT})`);
  }
  let components: unknown;
  try {
    components = JSON.parse(metadata.components ?? '');
  } catch {
    components = undefined;
  }
  if (!Array.isArray(components) || !components.every((c) => typeof c === 'string')) throw new OptimizerError(`${file}: the optimizer composition in its metadata is unreadable`);
  return {
    format: OPTIMIZER_STATE_FORMAT,
    components,
    iterations: Number(metadata.iterations),
    microSteps: Number(metadata.microSteps),
    slots: tensors,
  };
}

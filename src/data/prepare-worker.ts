/** A `prepare` worker thread: turns batches of documents into serialized examples. */
import { parentPort, workerData } from 'node:worker_threads';
import { type DocumentJob, DocumentProcessor } from './document-instances.js';
import { Vocab } from './vocab.js';

export interface WorkerInit {
  vocabTokens: string[];
  vocabHash: string;
  job: DocumentJob;
}

export interface BatchRequest {
  batch: number;
  copy: number;
  /** [document index, lines] */
  docs: [number, string[]][];
}

export interface BatchResult {
  batch: number;
  examples: Uint8Array[];
  error?: string;
}

const init = workerData as WorkerInit;
const processor = new DocumentProcessor(new Vocab(init.vocabTokens, init.vocabHash), init.job);

parentPort!.on('message', (req: BatchRequest) => {
  try {
    const examples = req.docs.flatMap(([index, lines]) => processor.examples(lines, index, req.copy));
    // copied, not transferred: protobufjs may hand out slices of a shared buffer pool
    parentPort!.postMessage({ batch: req.batch, examples } satisfies BatchResult);
  } catch (err) {
    parentPort!.postMessage({ batch: req.batch, examples: [], error: (err as Error).message } satisfies BatchResult);
  }
});

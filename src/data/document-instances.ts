import { encodeExample, int64Feature } from './example.js';
import { packDocument, segmentSentence, type Seq2SeqInstance, seq2seqInstance } from './instances.js';
import { maskWholeWords, seededRandom } from './masking.js';
import { BertTokenizer } from './tokenizer.js';
import { Vocab } from './vocab.js';

function seq2seqExample(inst: Seq2SeqInstance, document: number): Uint8Array {
  return encodeExample({ token_ids: int64Feature(inst.tokenIds), segment_ids: int64Feature(inst.segmentIds), document: int64Feature([document]) });
}

/** What turns one document into serialized examples; the same in the main thread and in workers. */
export interface DocumentJob {
  task: 'mlm' | 'seq2seq';
  masking: 'dynamic' | 'static';
  maxLength: number;
  seed: number;
  lowerCase: boolean;
}

export class DocumentProcessor {
  readonly tokenizer: BertTokenizer;
  private readonly special: { cls: number; sep: number };
  private readonly specials: Set<number>;

  constructor(
    readonly vocab: Vocab,
    readonly job: DocumentJob,
  ) {
    this.tokenizer = new BertTokenizer(vocab, { lowerCase: job.lowerCase });
    this.special = { cls: vocab.cls, sep: vocab.sep };
    this.specials = new Set([vocab.cls, vocab.sep, vocab.pad, vocab.mask, vocab.unk]);
  }

  /**
   * The examples of document `index` in masking pass `copy`. Its random stream depends on
   * (seed, index, copy) only, so any split of the work across threads gives the same bytes.
   * Every example records `index`, so training can hold out whole documents: the copies of
   * a document must never be split between training and evaluation.
   */
  examples(doc: readonly string[], index: number, copy: number): Uint8Array[] {
    const { job, vocab } = this;
    const random = seededRandom(job.seed, index, copy);
    const document = int64Feature([index]);
    if (job.task === 'seq2seq') {
      // plain text: the document cut into windows of one instance, each split at a point
      // drawn uniformly in [1, L - 1), so the target always continues its source
      const ids = doc.flatMap((line) => this.tokenizer.tokenize(line).ids);
      const window = job.maxLength - 3;
      const out: Uint8Array[] = [];
      for (let start = 0; start < ids.length; start += window) {
        const part = ids.slice(start, start + window);
        if (part.length < 2) continue;
        const split = part.length === 2 ? 1 : 1 + Math.floor(random() * (part.length - 2));
        const inst = seq2seqInstance(part.slice(0, split), part.slice(split), job.maxLength, this.special);
        out.push(seq2seqExample(inst, index));
      }
      return out;
    }
    const out: Uint8Array[] = [];
    const tokenizer = this.tokenizer;
    const sentences = (function* () {
      for (const line of doc) yield segmentSentence(tokenizer, line);
    })();
    for (const inst of packDocument(sentences, job.maxLength, this.special)) {
      if (job.masking === 'dynamic') {
        out.push(encodeExample({ token_ids: int64Feature(inst.tokenIds), word_ids: int64Feature(inst.wordIds), document }));
      } else {
        const masked = maskWholeWords(inst.tokenIds, inst.wordIds, random, { mask: vocab.mask, size: vocab.size, specials: this.specials });
        out.push(encodeExample({ token_ids: int64Feature(masked.tokenIds), mask_ids: int64Feature(masked.maskIds), document }));
      }
    }
    return out;
  }

  /** A source/target pair, which is document `index` of its own. */
  pair(source: string, target: string, index: number): Uint8Array {
    const inst = seq2seqInstance(this.tokenizer.tokenize(source).ids, this.tokenizer.tokenize(target).ids, this.job.maxLength, this.special);
    return seq2seqExample(inst, index);
  }
}

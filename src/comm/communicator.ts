/**
 * One rank's collectives in one generation: ring all-reduce, broadcast and all-gather over
 * the gRPC data plane. Each rank pulls from its left ring neighbour (a server-streaming call
 * it opens, so the bulk bytes flow toward the client, whose receive window is raised) and
 * serves its right neighbour's pull. Chunks are written as views of the caller's buffers,
 * as soon as the chunk they depend on has been received, so sending, receiving and adding
 * overlap and many chunks are in flight.
 */
import { CollectiveError, RpcError, Status, type FailureReason, type PeerRef } from './errors.js';
import { addHalf, copyHalf, encodeHalf, roundHalfInPlace } from './fp16.js';
import { ChunkAdder, ReductionBuffer } from './simd-add.js';
import { allReduceSchedule, chunks, FlatBuffers, type RingSchedule, ringSchedule, type Transfer } from './flat.js';
import { chunkPrefix, decodeChunk, decodeChunkHead, decodeStatusReply, encodePullRequest, encodeStatusRequest, Encoding, Kind, PULL_PATH, STATUS_PATH, type ChunkHeader, type PullRequest, type StatusReply } from './proto.js';
import type { CommServer, PullTarget } from './server.js';
import { connect, parseAddress, startCall, unaryCall, type Call, type ClientSession, type MessageRoute, type ServerCall } from './wire.js';

export type Compression = 'none' | 'fp16';

export interface CommunicatorOptions {
  readonly generation: number;
  readonly rank: number;
  /** host:port of every rank's CommServer, indexed by rank. */
  readonly peers: readonly string[];
  /** Order of the ranks around the ring (default 0..n-1): put ranks that share a host next to each other. */
  readonly ring?: readonly number[];
  /** Every collective resolves or rejects with CollectiveError within this time (default 60 s). */
  readonly deadlineMs?: number;
  /** Elements per chunk, the unit of pipelining (default 1048576: 4 MiB of float32). All ranks must agree. */
  readonly chunkElements?: number;
  /** Default compression of allReduce (default 'none'). */
  readonly compression?: Compression;
  /** Bytes written but not yet flushed to the socket, at most (default 32 MiB). */
  readonly maxInFlightBytes?: number;
  /** Time given to asking peers for their state when a collective fails (default min(2 s, deadline / 4)). */
  readonly probeMs?: number;
}

export interface AllReduceOptions {
  readonly op?: 'sum' | 'mean';
  readonly compression?: Compression;
}

/** A payload plan: what goes out and comes in, in order, and what to do with what comes in. */
interface Plan {
  readonly kind: number;
  readonly elements: number;
  readonly encoding: number;
  readonly root: number;
  readonly bytesPerElement: number;
  readonly sends: readonly Transfer[];
  readonly sendAfter: readonly number[];
  readonly receives: readonly Transfer[];
  /** false where this rank neither pulls (broadcast root) nor is pulled (the rank before the root). */
  readonly pulls: boolean;
  readonly served: boolean;
  payload(i: number): Uint8Array[];
  /** Where receive i's payload may be read straight into (views of the caller's buffers), or undefined: it goes through apply. */
  targets?(i: number): Uint8Array[] | undefined;
  /** Where receive i's payload of `bytes` may land to be added in place (ReductionBuffer destinations), or undefined. */
  landing?(i: number, bytes: number): { target: Uint8Array; apply(): void } | undefined;
  apply(i: number, data: Uint8Array): void;
  finish?(): void;
}

interface Op {
  readonly name: string;
  readonly sequence: number;
  readonly plan: Plan;
  readonly deadline: number;
  state: 'running' | 'failing' | 'done';
  received: number;
  recvEnded: boolean;
  recvCall?: Call;
  sendCall?: ServerCall;
  sent: number;
  outstanding: number;
  sendEnded: boolean;
  timers: NodeJS.Timeout[];
  resolve(): void;
  reject(e: CollectiveError): void;
}

interface Hint {
  rank: number | undefined;
  reason: FailureReason;
  detail: string;
}

class ProtocolViolation extends Error {}

const CHUNK_OVERHEAD = 256;
/**
 * 4 MiB of float32. Measured on loopback at 64 MiB (bench:allreduce): 1 MiB chunks reached
 * 1.0-1.06 GB/s busbw at 2 ranks, 4 MiB 1.5 (each message costs a fixed amount on both
 * sides); 8 MiB was slower again at 2 ranks, as the pipeline gets too short.
 */
export const DEFAULT_CHUNK_ELEMENTS = 1 << 20;
const MAX_GATHER = 1 << 16;
/** How many collectives ahead a right neighbour's pull may be held for. */
const MAX_AHEAD = 64;

export class Communicator implements PullTarget {
  readonly runId: string;
  readonly generation: number;
  readonly rank: number;
  readonly size: number;
  readonly #server: CommServer;
  readonly #peers: readonly string[];
  readonly #ring: readonly number[];
  readonly #pos: number;
  readonly #left: number;
  readonly #right: number;
  readonly #deadlineMs: number;
  readonly #chunkElements: number;
  readonly #compression: Compression;
  readonly #maxInFlight: number;
  readonly #probeMs: number;
  #sequence = 0;
  #op: Op | undefined;
  /**
   * The right neighbour's pulls for collectives this rank has not started yet. A rank can be
   * several collectives ahead of its left neighbour: a broadcast root needs nothing from it.
   */
  readonly #early = new Map<number, { request: PullRequest; call: ServerCall }>();
  #leftSession: ClientSession | undefined;
  /** Received chunks are assembled in its memory and added from there with SIMD. */
  readonly #adder: ChunkAdder;
  #broken: CollectiveError | undefined;
  #closed = false;
  #bytesSent = 0;
  #bytesReceived = 0;

  constructor(server: CommServer, options: CommunicatorOptions) {
    const n = options.peers.length;
    const ring = options.ring ?? [...Array(n).keys()];
    if (n < 1) throw new Error('a communicator needs at least one rank');
    if (!Number.isInteger(options.rank) || options.rank < 0 || options.rank >= n) throw new Error(`rank ${options.rank} is not in 0..${n - 1}`);
    if (ring.length !== n || new Set(ring).size !== n || ring.some((r) => !Number.isInteger(r) || r < 0 || r >= n)) throw new Error(`ring order [${ring.join(',')}] is not a permutation of the ${n} ranks`);
    if (!Number.isSafeInteger(options.generation) || options.generation < 0) throw new Error(`generation ${options.generation} is not a non-negative integer`);
    options.peers.forEach((address, r) => {
      try {
        parseAddress(address);
      } catch (e) {
        throw new Error(`peer address of rank ${r}: ${(e as Error).message}`);
      }
    });
    this.runId = server.options.runId;
    this.generation = options.generation;
    this.rank = options.rank;
    this.size = n;
    this.#server = server;
    this.#peers = options.peers;
    this.#ring = ring;
    this.#pos = ring.indexOf(options.rank);
    this.#left = ring[(this.#pos - 1 + n) % n]!;
    this.#right = ring[(this.#pos + 1) % n]!;
    this.#deadlineMs = options.deadlineMs ?? 60_000;
    this.#chunkElements = options.chunkElements ?? DEFAULT_CHUNK_ELEMENTS;
    if (!Number.isInteger(this.#chunkElements) || this.#chunkElements < 1 || this.#chunkElements > 1 << 22) throw new Error(`chunkElements ${this.#chunkElements} is not in 1..4194304`);
    this.#compression = options.compression ?? 'none';
    this.#maxInFlight = options.maxInFlightBytes ?? 32 << 20;
    this.#probeMs = options.probeMs ?? Math.min(2000, this.#deadlineMs / 4);
    this.#adder = new ChunkAdder(CHUNK_OVERHEAD + this.#chunkElements * 4, this.#chunkElements);
    server.attach(this);
  }

  /**
   * Sums (or averages) the buffers across all ranks, in place, as one logical flat buffer.
   * Every rank must pass buffers of the same total length; afterwards every rank holds
   * bit-identical values. With fp16 compression each value is within
   * n * (2^-11 * sum_i |x_i| + 2^-25) of the exact sum (README).
   */
  allReduce(buffers: readonly Float32Array[] | Float32Array, options: AllReduceOptions = {}): Promise<void> {
    const list = buffers instanceof Float32Array ? [buffers] : buffers;
    const flat = new FlatBuffers(list);
    const n = this.size;
    const mean = (): void => {
      if (options.op === 'mean' && n > 1) for (const b of list) for (let i = 0; i < b.length; i++) b[i] = b[i]! / n;
    };
    const schedule = allReduceSchedule(flat.length, n, this.#pos, this.#chunkElements);
    return this.#run('allReduce', this.#ringPlan(Kind.ALL_REDUCE, flat, schedule, options.compression ?? this.#compression, mean));
  }

  /**
   * The reduce-scatter half of allReduce: afterwards this rank holds the sum over all ranks
   * of its own segment, [bounds[rank], bounds[rank + 1]) of the logical flat buffer, and
   * partial sums elsewhere. Every rank passes the same bounds: n + 1 non-decreasing offsets
   * from 0 to the total length (a segment may be empty). Each rank sends and receives about
   * half of what allReduce does; with allGatherSegments after it, the pair moves the bytes
   * of one allReduce, and the ranks may change their segments in between (a sharded
   * optimizer update).
   */
  reduceScatter(buffers: readonly Float32Array[] | Float32Array, bounds: readonly number[]): Promise<void> {
    return this.#segmentCollective('reduceScatter', buffers, bounds);
  }

  /**
   * Copies each rank's segment, [bounds[rank], bounds[rank + 1]) of the logical flat buffer,
   * to every rank, in place; bounds as for reduceScatter. Afterwards every rank holds the
   * same bytes.
   */
  allGatherSegments(buffers: readonly Float32Array[] | Float32Array, bounds: readonly number[]): Promise<void> {
    return this.#segmentCollective('allGatherSegments', buffers, bounds);
  }

  /**
   * One half of the ring all-reduce over the callers' segments. The ring leaves position p
   * holding ring segment p + 1 after the reduce-scatter: ring segment k is the segment of
   * rank ring[k - 1], so each rank holds its own.
   */
  #segmentCollective(name: 'reduceScatter' | 'allGatherSegments', buffers: readonly Float32Array[] | Float32Array, bounds: readonly number[]): Promise<void> {
    const flat = new FlatBuffers(buffers instanceof Float32Array ? [buffers] : buffers);
    const n = this.size;
    const valid = bounds.length === n + 1 && bounds[0] === 0 && bounds[n] === flat.length && bounds.every((b, i) => Number.isSafeInteger(b) && (i === 0 || b >= bounds[i - 1]!));
    if (!valid) return Promise.reject(new Error(`${name}: segment bounds [${bounds.slice(0, 8).join(', ')}${bounds.length > 8 ? ', ...' : ''}] do not split ${flat.length} elements among ${n} ranks: give ${n + 1} non-decreasing offsets from 0 to ${flat.length}`));
    const schedule = ringSchedule(n, this.#pos, this.#chunkElements, name === 'reduceScatter' ? 'reduceScatter' : 'allGather', (k) => {
      const rank = this.#ring[(k - 1 + n) % n]!;
      return [bounds[rank]!, bounds[rank + 1]!];
    });
    return this.#run(name, this.#ringPlan(name === 'reduceScatter' ? Kind.REDUCE_SCATTER : Kind.ALL_GATHER_SEGMENTS, flat, schedule, 'none'));
  }

  /**
   * The plan of a ring collective over `flat`: receives of reduce-scatter steps (step < n - 1)
   * are added in, those of all-gather steps copied; `finish` runs once everything arrived.
   */
  #ringPlan(kind: number, flat: FlatBuffers, schedule: RingSchedule, compression: Compression, finish?: () => void): Plan {
    const n = this.size;
    const { sends, sendAfter, receives } = schedule;
    const fp16 = compression === 'fp16';
    return {
      kind,
      elements: flat.length,
      encoding: fp16 ? Encoding.FLOAT16 : Encoding.FLOAT32,
      root: 0,
      bytesPerElement: fp16 ? 2 : 4,
      sends,
      sendAfter,
      receives,
      pulls: n > 1,
      served: n > 1,
      payload: (i) => {
        const t = sends[i]!;
        const pieces = flat.pieces(t.offset, t.length);
        if (!fp16) return pieces.map(bytesOf);
        const out = new Uint16Array(t.length);
        let at = 0;
        for (const p of pieces) {
          encodeHalf(p, out.subarray(at, at + p.length));
          at += p.length;
        }
        return [bytesOf(out)];
      },
      // all-gather steps copy what arrives: it can land in place
      targets: (i) => (fp16 || receives[i]!.step < n - 1 ? undefined : flat.pieces(receives[i]!.offset, receives[i]!.length).map(bytesOf)),
      landing: (i, bytes) => {
        const t = receives[i]!;
        if (fp16 || t.step >= n - 1) return undefined;
        const pieces = flat.pieces(t.offset, t.length);
        const rb = ReductionBuffer.holding(pieces);
        if (!rb || bytes > rb.landing.length) return undefined;
        return {
          target: rb.landing.subarray(0, bytes),
          apply: () => {
            let at = 0;
            for (const p of pieces) {
              rb.addLanded(p, at);
              at += p.byteLength;
            }
          },
        };
      },
      apply: (i, data) => {
        const t = receives[i]!;
        const reduce = t.step < n - 1;
        let at = 0;
        if (fp16) {
          const src = view(data, Uint16Array, 2);
          for (const p of flat.pieces(t.offset, t.length)) {
            const s = src.subarray(at, at + p.length);
            if (reduce) addHalf(p, s);
            else copyHalf(p, s);
            // the owner of the reduced segment rounds it as every other rank will receive it
            if (t.step === n - 2) roundHalfInPlace(p);
            at += p.length;
          }
          return;
        }
        const src = view(data, Float32Array, 4);
        for (const p of flat.pieces(t.offset, t.length)) {
          if (reduce) this.#adder.add(p, src.subarray(at, at + p.length));
          else p.set(src.subarray(at, at + p.length));
          at += p.length;
        }
      },
      finish,
    };
  }

  /**
   * A zeroed Float32Array that allReduce adds into in place, without copying it through the
   * adder's memory: allocate gradient buffers this way (views of it serve as a list). Valid
   * for any communicator with the same chunk size; a plain array where WebAssembly SIMD is missing.
   */
  allocate(elements: number): Float32Array {
    return ReductionBuffer.allocate(elements, this.#chunkElements * 4);
  }

  /** Payload bytes this rank has sent to its right neighbour and received from its left, over all its collectives (metrics). */
  get bytesSent(): number {
    return this.#bytesSent;
  }

  get bytesReceived(): number {
    return this.#bytesReceived;
  }

  /** Copies the root's buffers to every rank (a joining worker receives parameters and optimizer state). */
  broadcast(buffers: readonly Float32Array[] | Float32Array, root: number): Promise<void> {
    const list = buffers instanceof Float32Array ? [buffers] : buffers;
    if (!Number.isInteger(root) || root < 0 || root >= this.size) return Promise.reject(new Error(`broadcast root ${root} is not a rank of 0..${this.size - 1}`));
    const flat = new FlatBuffers(list);
    const n = this.size;
    const d = (this.#pos - this.#ring.indexOf(root) + n) % n; // hops from the root
    const all = chunks(0, flat.length, this.#chunkElements).map(([offset, length]) => ({ step: 0, offset, length }));
    const plan: Plan = {
      kind: Kind.BROADCAST,
      elements: flat.length,
      encoding: Encoding.FLOAT32,
      root,
      bytesPerElement: 4,
      sends: d === n - 1 ? [] : all,
      sendAfter: all.map((_, i) => (d === 0 ? -1 : i)),
      receives: d === 0 ? [] : all,
      pulls: n > 1 && d !== 0,
      served: n > 1 && d !== n - 1,
      payload: (i) => flat.pieces(all[i]!.offset, all[i]!.length).map(bytesOf),
      targets: (i) => flat.pieces(all[i]!.offset, all[i]!.length).map(bytesOf),
      apply: (i, data) => {
        const src = view(data, Float32Array, 4);
        let at = 0;
        for (const p of flat.pieces(all[i]!.offset, all[i]!.length)) {
          p.set(src.subarray(at, at + p.length));
          at += p.length;
        }
      },
    };
    return this.#run('broadcast', plan);
  }

  /** Every rank's numbers (same count on every rank), indexed by rank: parameter checksums, step metrics. */
  allGather(values: ArrayLike<number>): Promise<Float64Array[]> {
    const n = this.size;
    const k = values.length;
    if (k > MAX_GATHER) return Promise.reject(new Error(`allGather takes at most ${MAX_GATHER} numbers per rank, got ${k}: it is for checksums and metrics`));
    const result: Float64Array[] = new Array<Float64Array>(n);
    result[this.rank] = Float64Array.from(values);
    const origin = (i: number): number => this.#ring[(((this.#pos - i) % n) + n) % n]!;
    const items = Array.from({ length: n - 1 }, (_, i) => i);
    const plan: Plan = {
      kind: Kind.ALL_GATHER,
      elements: k,
      encoding: Encoding.FLOAT64,
      root: 0,
      bytesPerElement: 8,
      sends: items.map((i) => ({ step: i, offset: origin(i), length: k })),
      sendAfter: items.map((i) => i - 1),
      receives: items.map((i) => ({ step: i, offset: origin(i + 1), length: k })),
      pulls: n > 1,
      served: n > 1,
      payload: (i) => [bytesOf(result[origin(i)]!)],
      apply: (i, data) => {
        result[origin(i + 1)] = new Float64Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
      },
    };
    return this.#run('allGather', plan).then(() => result);
  }

  /** Ends this generation on this rank: a collective in progress fails with reason 'closed'. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#op && this.#op.state === 'running') this.#settle(this.#op, this.#error(this.#op, { rank: undefined, reason: 'closed', detail: 'this communicator was closed' }));
    for (const { call } of this.#early.values()) call.finish(Status.UNAVAILABLE, `rank ${this.rank} closed generation ${this.generation}`);
    this.#early.clear();
    this.#leftSession?.close();
    this.#server.detach(this);
  }

  status(): StatusReply {
    return { runId: this.runId, generation: this.generation, rank: this.rank, sequence: this.#sequence, active: this.#op?.state === 'running' };
  }

  // ---- the server side: the right neighbour's pull ----

  handlePull(request: PullRequest, call: ServerCall): void {
    if (request.toRank !== this.rank) return call.finish(Status.FAILED_PRECONDITION, `this is rank ${this.rank}, not rank ${request.toRank}: the caller has a wrong peer address`);
    if (request.fromRank !== this.#right) return call.finish(Status.PERMISSION_DENIED, `rank ${request.fromRank} is not this rank's right ring neighbour (rank ${this.#right}) in generation ${this.generation}`);
    const op = this.#op;
    if (op && request.sequence === op.sequence) return this.#attachPull(op, request, call);
    if (request.sequence > this.#sequence && request.sequence <= this.#sequence + MAX_AHEAD && !this.#broken && !this.#closed) {
      if (this.#early.get(request.sequence)?.call.open) return call.finish(Status.FAILED_PRECONDITION, `collective #${request.sequence} is already being pulled`);
      this.#early.set(request.sequence, { request, call });
      return;
    }
    if (this.#broken) return call.finish(Status.ABORTED, this.#broken.message, culpritTrailer(this.#broken.peer?.rank));
    call.finish(Status.FAILED_PRECONDITION, `unexpected collective sequence ${request.sequence}: this rank is at #${this.#sequence}${op?.state === 'running' ? ' (in progress)' : ''}`);
  }

  #attachPull(op: Op, request: PullRequest, call: ServerCall): void {
    const plan = op.plan;
    if (op.state !== 'running') return this.#broken ? call.finish(Status.ABORTED, this.#broken.message, culpritTrailer(this.#broken.peer?.rank)) : call.finish(Status.FAILED_PRECONDITION, `collective #${op.sequence} is over on rank ${this.rank}`);
    if (op.sendCall) return call.finish(Status.FAILED_PRECONDITION, `collective #${op.sequence} is already being pulled`);
    if (!call.open) return this.#fail(op, { rank: this.#right, reason: 'aborted', detail: 'it cancelled its pull for this collective' });
    const mine = describePlan(op.name, plan, this.#chunkElements);
    const theirs = describePlan(kindName(request.kind), request, request.chunkElements);
    if (!plan.served || mine !== theirs) {
      call.finish(Status.INVALID_ARGUMENT, `collective #${op.sequence} mismatch: rank ${request.fromRank} called ${theirs}, rank ${this.rank} called ${mine}${plan.served ? '' : ' (and serves no pull)'}`);
      return this.#fail(op, { rank: this.#right, reason: 'protocol', detail: `it called ${theirs} where this rank called ${mine}: every rank must call the same collectives in the same order` });
    }
    op.sendCall = call;
    call.onClose(() => {
      if (op.state === 'running' && !op.sendEnded) this.#fail(op, { rank: this.#right, reason: 'aborted', detail: 'it closed its pull in the middle of the collective' });
    });
    call.start();
    this.#pump(op);
  }

  #pump(op: Op): void {
    const call = op.sendCall;
    const plan = op.plan;
    if (!call || op.state !== 'running') return;
    while (op.sent < plan.sends.length && op.outstanding < this.#maxInFlight) {
      const i = op.sent;
      const after = plan.sendAfter[i]!;
      if (after >= 0 && op.received <= after) break;
      const t = plan.sends[i]!;
      const bytes = t.length * plan.bytesPerElement;
      const prefix = chunkPrefix({ runId: this.runId, generation: this.generation, sequence: op.sequence, index: i, offset: t.offset, encoding: plan.encoding }, bytes);
      op.sent++;
      this.#bytesSent += bytes;
      op.outstanding += bytes + prefix.length;
      call.write([prefix, ...plan.payload(i)], (e) => this.#written(op, bytes + prefix.length, e));
    }
    if (op.sent === plan.sends.length && op.outstanding === 0 && !op.sendEnded) {
      op.sendEnded = true;
      call.finish(Status.OK);
      this.#maybeDone(op);
    }
  }

  #written(op: Op, bytes: number, error: Error | null | undefined): void {
    op.outstanding -= bytes;
    if (error) return this.#fail(op, { rank: this.#right, reason: 'unreachable', detail: `sending to it failed: ${error.message}` });
    this.#pump(op);
  }

  // ---- the client side: pulling from the left neighbour ----

  #pull(op: Op): void {
    const plan = op.plan;
    const request: PullRequest = {
      runId: this.runId,
      generation: this.generation,
      sequence: op.sequence,
      fromRank: this.rank,
      toRank: this.#left,
      kind: plan.kind,
      elements: plan.elements,
      encoding: plan.encoding,
      root: plan.root,
      chunkElements: this.#chunkElements,
    };
    this.#leftSession ??= connect(this.#peers[this.#left]!, this.#server.tls);
    // explicit limit: one chunk (or one rank's numbers) plus the header fields
    const messageLimit = CHUNK_OVERHEAD + (plan.kind === Kind.ALL_GATHER ? plan.elements : this.#chunkElements) * plan.bytesPerElement;
    op.recvCall = startCall(this.#leftSession, PULL_PATH, encodePullRequest(request), { authorization: this.#server.token.header() }, messageLimit, op.deadline - Date.now(), {
      onMessage: (m) => this.#onChunk(op, m),
      route: (head, bytes) => this.#route(op, head, bytes),
      onEnd: (error) => {
        if (op.state !== 'running' || op.recvEnded) return;
        if (error) return this.#fail(op, hintFromCallError(this.#left, error));
        if (op.received < plan.receives.length) return this.#fail(op, { rank: this.#left, reason: 'protocol', detail: `it ended the stream after ${op.received} of ${plan.receives.length} chunks` });
        op.recvEnded = true;
        this.#maybeDone(op);
      },
    }, messageLimit <= this.#adder.assembly.length ? this.#adder.assembly : undefined);
  }

  /** A whole chunk message (short ones, or a sender that put something the router cannot read first). */
  #onChunk(op: Op, message: Buffer): void {
    if (op.state !== 'running') throw new ProtocolViolation('collective over');
    const c = decodeChunk(message);
    this.#check(op, c, c.data.byteLength);
    op.plan.apply(op.received, c.data);
    this.#received(op, c.data.byteLength);
  }

  /**
   * Decides from a chunk's header where its payload goes, before the payload arrives: into
   * the caller's buffers where it is copied as it is, else into the adder's memory and then
   * through the plan's apply. Either way the socket reads it there directly.
   */
  #route(op: Op, head: Buffer, messageBytes: number): MessageRoute | undefined {
    if (op.state !== 'running') throw new ProtocolViolation('collective over');
    const parsed = decodeChunkHead(head);
    if (!parsed || parsed.dataOffset + parsed.dataBytes !== messageBytes) return undefined;
    const { header, dataOffset, dataBytes } = parsed;
    this.#check(op, header, dataBytes);
    const i = op.received;
    const plan = op.plan;
    const direct = plan.targets?.(i);
    if (direct) return { headBytes: dataOffset, targets: direct, complete: () => this.#received(op, dataBytes) };
    const landing = plan.landing?.(i, dataBytes);
    if (landing) {
      return {
        headBytes: dataOffset,
        targets: [landing.target],
        complete: () => {
          landing.apply();
          this.#received(op, dataBytes);
        },
      };
    }
    if (dataBytes > this.#adder.assembly.length) return undefined;
    const into = this.#adder.assembly.subarray(0, dataBytes);
    return {
      headBytes: dataOffset,
      targets: [into],
      complete: () => {
        plan.apply(i, into);
        this.#received(op, dataBytes);
      },
    };
  }

  /** Throws ProtocolViolation unless the chunk is the one the schedule has due next. */
  #check(op: Op, c: ChunkHeader, dataBytes: number): void {
    const plan = op.plan;
    const i = op.received;
    const t = plan.receives[i];
    const problem =
      c.runId !== this.runId
        ? `a chunk of run '${c.runId}'`
        : c.generation !== this.generation
          ? `a chunk of generation ${c.generation} (this is ${this.generation})`
          : c.sequence !== op.sequence
            ? `a chunk of collective #${c.sequence} during #${op.sequence}`
            : !t
              ? `more chunks than the ${plan.receives.length} of the schedule`
              : c.index !== i || c.offset !== t.offset
                ? `chunk ${c.index} at ${c.offset} where chunk ${i} at ${t.offset} was due`
                : c.encoding !== plan.encoding
                  ? `encoding ${c.encoding} where ${plan.encoding} was agreed`
                  : dataBytes !== t.length * plan.bytesPerElement
                    ? `${dataBytes} payload bytes where ${t.length * plan.bytesPerElement} were due`
                    : undefined;
    if (problem) throw new ProtocolViolation(`it sent ${problem}; nothing of it was applied`);
  }

  /** Receive op.received is applied: what it unblocks can be sent. */
  #received(op: Op, dataBytes: number): void {
    this.#bytesReceived += dataBytes;
    op.received++;
    this.#pump(op);
    // done with the last chunk: waiting for the status trailers would wait on the sender's
    // event loop, which may be busy with its own caller's work by then
    if (op.received === op.plan.receives.length) {
      op.recvEnded = true;
      this.#maybeDone(op);
    }
  }

  // ---- running a collective ----

  #run(name: string, plan: Plan): Promise<void> {
    if (this.#closed) return Promise.reject(new CollectiveError(name, this.generation, this.#sequence + 1, undefined, 'closed', 'this communicator was closed'));
    if (this.#broken) return Promise.reject(this.#broken);
    if (this.#op?.state === 'running' || this.#op?.state === 'failing') return Promise.reject(new Error(`${name} called while ${this.#op.name} #${this.#op.sequence} is in progress: collectives run one at a time, in the same order on every rank`));
    const sequence = ++this.#sequence;
    return new Promise<void>((resolve, reject) => {
      const op: Op = { name, sequence, plan, deadline: Date.now() + this.#deadlineMs, state: 'running', received: 0, recvEnded: !plan.pulls, sent: 0, outstanding: 0, sendEnded: !plan.served, timers: [], resolve, reject };
      this.#op = op;
      const stallAt = Math.max(0, this.#deadlineMs - this.#probeMs - 50);
      op.timers.push(setTimeout(() => this.#fail(op, this.#stallHint(op)), stallAt));
      op.timers.push(setTimeout(() => this.#settle(op, this.#error(op, this.#stallHint(op))), this.#deadlineMs));
      const early = this.#early.get(sequence);
      this.#early.delete(sequence);
      if (plan.pulls) this.#pull(op);
      if (early) this.#attachPull(op, early.request, early.call);
      this.#maybeDone(op);
    });
  }

  #stallHint(op: Op): Hint {
    if (!op.recvEnded) return { rank: this.#left, reason: 'timeout', detail: `${op.received} of ${op.plan.receives.length} chunks arrived from it` };
    if (!op.sendCall) return { rank: this.#right, reason: 'timeout', detail: 'it never pulled this collective' };
    return { rank: this.#right, reason: 'timeout', detail: `it took ${op.sent} of ${op.plan.sends.length} chunks and stopped reading` };
  }

  #maybeDone(op: Op): void {
    if (op.state !== 'running' || !op.recvEnded || !op.sendEnded) return;
    op.plan.finish?.();
    op.state = 'done';
    for (const t of op.timers) clearTimeout(t);
    op.resolve();
  }

  /** Stops the collective's streams, asks the peers what state they are in, and rejects with the rank to blame. */
  #fail(op: Op, hint: Hint): void {
    if (op.state !== 'running') return;
    op.state = 'failing';
    op.recvCall?.cancel();
    op.sendCall?.finish(Status.ABORTED, `rank ${this.rank} aborted collective #${op.sequence}: ${hint.rank !== undefined ? `rank ${hint.rank} ` : ''}${hint.detail}`, culpritTrailer(hint.rank));
    const budget = Math.min(this.#probeMs, op.deadline - Date.now() - 20);
    if (budget < 10) return this.#settle(op, this.#error(op, hint));
    void this.#diagnose(op, hint, budget).then((e) => this.#settle(op, e));
  }

  #settle(op: Op, error: CollectiveError): void {
    if (op.state === 'done') return;
    const wasRunning = op.state === 'running';
    op.state = 'done';
    for (const t of op.timers) clearTimeout(t);
    if (wasRunning) {
      op.recvCall?.cancel();
      op.sendCall?.finish(Status.ABORTED, error.message, culpritTrailer(error.peer?.rank));
    }
    // a failed ring cannot be trusted again: the coordinator forms a new generation
    this.#broken ??= error;
    for (const { call } of this.#early.values()) call.finish(Status.ABORTED, error.message, culpritTrailer(error.peer?.rank));
    this.#early.clear();
    this.#leftSession?.destroy();
    this.#leftSession = undefined;
    op.reject(error);
  }

  #error(op: Op, hint: Hint): CollectiveError {
    if (hint.reason === 'unreachable' && this.#server.tls) hint = { ...hint, detail: `${hint.detail}; with mutual TLS, check that both ranks' certificates are signed by the run's CA` };
    const peer: PeerRef | undefined = hint.rank === undefined ? undefined : { rank: hint.rank, address: this.#peers[hint.rank] ?? '?' };
    return new CollectiveError(op.name, this.generation, op.sequence, peer, hint.reason, hint.detail);
  }

  /** Asks every other rank for its status: a dead, stopped or lagging rank is the one to name. */
  async #diagnose(op: Op, hint: Hint, budgetMs: number): Promise<CollectiveError> {
    const others = this.#ring.filter((r) => r !== this.rank);
    const answers = await Promise.all(others.map((r) => this.#probe(r, budgetMs)));
    const find = (pred: (a: ProbeResult) => boolean): number | undefined => {
      const hits = others.filter((_, i) => pred(answers[i]!));
      return hint.rank !== undefined && hits.includes(hint.rank) ? hint.rank : hits[0];
    };
    const at = (r: number): ProbeResult => answers[others.indexOf(r)]!;
    const unreachable = find((a) => a.kind === 'unreachable');
    if (unreachable !== undefined) return this.#error(op, { rank: unreachable, reason: 'unreachable', detail: withHint((at(unreachable) as { detail: string }).detail, hint.detail) });
    const unresponsive = find((a) => a.kind === 'unresponsive');
    if (unresponsive !== undefined) return this.#error(op, { rank: unresponsive, reason: 'unresponsive', detail: withHint(`no answer to a status probe within ${budgetMs} ms; it may be stopped or overloaded`, hint.detail) });
    const behind = find((a) => a.kind === 'reply' && (a.reply.generation < this.generation || (a.reply.generation === this.generation && a.reply.sequence < op.sequence)));
    if (behind !== undefined) {
      const s = (at(behind) as { reply: StatusReply }).reply;
      return this.#error(op, { rank: behind, reason: 'behind', detail: withHint(`it is at generation ${s.generation}, collective #${s.sequence}`, hint.detail) });
    }
    return this.#error(op, hint);
  }

  async #probe(rank: number, timeoutMs: number): Promise<ProbeResult> {
    const session = connect(this.#peers[rank]!, this.#server.tls);
    try {
      const reply = await unaryCall(session, STATUS_PATH, encodeStatusRequest({ runId: this.runId, generation: this.generation, fromRank: this.rank }), { authorization: this.#server.token.header() }, timeoutMs);
      return { kind: 'reply', reply: decodeStatusReply(reply) };
    } catch (e) {
      if (e instanceof RpcError && e.code === Status.CANCELLED) return { kind: 'unresponsive' };
      if (e instanceof RpcError && e.code !== Status.UNAVAILABLE) return { kind: 'rejected', detail: e.message };
      return { kind: 'unreachable', detail: e instanceof RpcError ? e.details : describeError(e as Error) };
    } finally {
      session.destroy();
    }
  }
}

type ProbeResult = { kind: 'reply'; reply: StatusReply } | { kind: 'unreachable'; detail: string } | { kind: 'unresponsive' } | { kind: 'rejected'; detail: string };

function hintFromCallError(left: number, error: Error): Hint {
  if (error instanceof ProtocolViolation) return { rank: left, reason: 'protocol', detail: error.message };
  if (error instanceof RpcError) {
    const culprit = error.trailers['comm-culprit-rank'];
    if (error.code === Status.ABORTED) return { rank: culprit !== undefined && /^\d+$/.test(culprit) ? Number(culprit) : left, reason: 'aborted', detail: `reported by rank ${left}: ${error.details}` };
    if (error.code === Status.UNAVAILABLE) return { rank: left, reason: 'unreachable', detail: error.details };
    if (error.code === Status.RESOURCE_EXHAUSTED || error.code === Status.INTERNAL) return { rank: left, reason: 'protocol', detail: error.details };
    return { rank: left, reason: 'rejected', detail: error.message };
  }
  return { rank: left, reason: 'unreachable', detail: describeError(error) };
}

/** A transport error in one line, with its cause (Node puts the TLS verdict there). */
function describeError(error: Error): string {
  const code = (error as NodeJS.ErrnoException).code;
  const cause = error.cause instanceof Error ? error.cause.message : undefined;
  return `${code ? `${code}: ` : ''}${error.message}${cause && !error.message.includes(cause) ? ` (${cause})` : ''}`;
}

/** What the probe found, then what this rank saw first (unless it says the same). */
function withHint(found: string, seen: string): string {
  return found === seen ? found : `${found} (first seen: ${seen})`;
}

function culpritTrailer(rank: number | undefined): Record<string, string> {
  return rank === undefined ? {} : { 'comm-culprit-rank': String(rank) };
}

function kindName(kind: number): string {
  const names: Record<number, string> = { [Kind.ALL_REDUCE]: 'allReduce', [Kind.BROADCAST]: 'broadcast', [Kind.ALL_GATHER]: 'allGather', [Kind.REDUCE_SCATTER]: 'reduceScatter', [Kind.ALL_GATHER_SEGMENTS]: 'allGatherSegments' };
  return names[kind] ?? `kind ${kind}`;
}

function describePlan(name: string, p: { elements: number; encoding: number; root: number }, chunkElements: number): string {
  const encoding = p.encoding === Encoding.FLOAT16 ? 'fp16' : p.encoding === Encoding.FLOAT64 ? 'fp64' : 'fp32';
  return `${name}(${p.elements} elements, ${encoding}${name === 'broadcast' ? `, root ${p.root}` : ''}, chunks of ${chunkElements})`;
}

function bytesOf(a: Float32Array | Uint16Array | Float64Array): Uint8Array {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/** A typed view of received bytes; a copy only when a foreign sender left them unaligned. */
function view<T extends Float32Array | Uint16Array>(data: Uint8Array, Ctor: { new (b: ArrayBufferLike, o: number, l: number): T; new (n: number): T }, size: number): T {
  if (data.byteOffset % size === 0) return new Ctor(data.buffer, data.byteOffset, data.byteLength / size);
  const copy = new Ctor(data.byteLength / size);
  new Uint8Array(copy.buffer).set(data);
  return copy;
}

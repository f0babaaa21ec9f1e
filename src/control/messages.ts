/**
 * The control plane (proto/control.proto) for @grpc/grpc-js: the service definition and the
 * message shapes as TypeScript sees them after proto-loader's conversion (64-bit integers
 * as numbers, bytes as Buffers, a oneof's case in `kind`).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

export interface JoinRequest {
  name: string;
  backend: string;
  freeMemoryBytes: number;
  runId: string;
  heldStep: number;
  generation: number;
  /** The control protocol the worker speaks; ControlClient.join fills in CONTROL_PROTOCOL. */
  protocol?: number;
}
export interface JoinReply {
  runId: string;
  workerId: number;
}
export interface InstructionsRequest {
  workerId: number;
  dataAddress: string;
}
export interface Assignment {
  generation: number;
  rank: number;
  peers: string[];
  runJson: string;
  restoreStep: number;
  /** The state of `restoreStep` follows, also when that is 0 (the initial weights of --init). */
  stateFollows: boolean;
}
export interface WireRecord {
  id: number;
  example: Buffer;
}
export interface Work {
  generation: number;
  step: number;
  epoch: number;
  firstSample: number;
  globalBatch: number;
  records: WireRecord[];
  length: number;
  digest: boolean;
  /** More records of the step can be claimed (Claim) once this share is done. */
  claim: boolean;
}
export interface ClaimRequest {
  workerId: number;
  generation: number;
  step: number;
  /** This worker's claims in the step, from 1: the same number again gets the same reply. */
  sequence: number;
}
export interface ClaimReply {
  firstSample: number;
  /** Empty: nothing is left to claim. */
  records: WireRecord[];
}
export interface Commit {
  generation: number;
  step: number;
}
export interface Abort {
  generation: number;
  step: number;
  reason: string;
}
export interface StateRequest {
  generation: number;
  step: number;
}
export interface StateChunk {
  workerId: number;
  generation: number;
  step: number;
  name: string;
  offset: number;
  total: number;
  data: Buffer;
}
export interface Stop {
  reason: string;
}
export type Instruction =
  | { kind: 'assign'; assign: Assignment }
  | { kind: 'work'; work: Work }
  | { kind: 'commit'; commit: Commit }
  | { kind: 'abort'; abort: Abort }
  | { kind: 'stateRequest'; stateRequest: StateRequest }
  | { kind: 'state'; state: StateChunk }
  | { kind: 'stop'; stop: Stop };
export interface HeartbeatRequest {
  workerId: number;
  generation: number;
  step: number;
}
export interface StepReport {
  workerId: number;
  generation: number;
  step: number;
  ok: boolean;
  error: string;
  loss: number;
  accuracy: number;
  targets: number;
  gradNorm: number;
  computeSeconds: number;
  reduceSeconds: number;
  tokens: number;
  paramDigest: string;
  /** The learning rate the step applies when committed (0 from a worker that predates it). */
  learningRate: number;
  /** Where the worker's time went (0 from a worker that predates them). */
  forwardBackwardSeconds: number;
  copySeconds: number;
  /** The optimizer update of the step committed before this one. */
  applySeconds: number;
  /** Records this worker computed: its share and its claims. */
  samples: number;
  /**
   * Positions it computed, padding included (each piece's records times the piece's own
   * length): the share balancer's measure of work. 0 from a worker that predates it.
   */
  positions: number;
}
export type Ack = Record<string, never>;

/**
 * The control protocol's version: 2 added claims (Work.claim, Claim, StepReport.samples).
 * A worker and a coordinator of different versions would fail every step; the coordinator
 * refuses such a worker when it joins.
 */
export const CONTROL_PROTOCOL = 2;

/** Largest message either side accepts: a step's records or one state chunk, with room. */
export const MAX_CONTROL_MESSAGE_BYTES = 64 << 20;

const PROTO_CANDIDATES = [new URL('../../../proto/control.proto', import.meta.url), new URL('../../proto/control.proto', import.meta.url)];

let service: grpc.ServiceDefinition | undefined;

/** The Control service, loaded once from proto/control.proto. */
export function controlService(): grpc.ServiceDefinition {
  if (service) return service;
  const file = PROTO_CANDIDATES.find((url) => existsSync(url));
  if (!file) throw new Error('proto/control.proto is missing from the installation');
  const definition = protoLoader.loadSync(fileURLToPath(file), { longs: Number, enums: String, defaults: true, oneofs: true });
  const pkg = grpc.loadPackageDefinition(definition) as unknown as { tfjs_pretrain: { control: { v1: { Control: grpc.ServiceClientConstructor } } } };
  service = pkg.tfjs_pretrain.control.v1.Control.service;
  return service;
}

/** The Control client constructor (the worker's side). */
export function controlClient(): grpc.ServiceClientConstructor {
  return grpc.makeGenericClientConstructor(controlService(), 'Control');
}

export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': MAX_CONTROL_MESSAGE_BYTES,
  'grpc.max_send_message_length': MAX_CONTROL_MESSAGE_BYTES,
  // records and restored state stream toward the worker, the client: let its window grow
  'grpc-node.flow_control_window': 32 << 20,
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
};

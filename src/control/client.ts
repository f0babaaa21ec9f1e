/** The worker's side of the control plane: every call carries the token and has a deadline. */
import * as grpc from '@grpc/grpc-js';
import { CHANNEL_OPTIONS, CONTROL_PROTOCOL, type ClaimReply, type ClaimRequest, controlClient, type HeartbeatRequest, type Instruction, type JoinReply, type JoinRequest, type StateChunk, type StepReport } from './messages.js';
import type { Credential, TlsFiles } from './server.js';

const UNARY_DEADLINE_MS = 15_000;

/** The coordinator cannot be reached, refused the worker, or went away: reported in one line. */
export class ControlError extends Error {
  override name = 'ControlError';
  constructor(
    message: string,
    readonly code?: grpc.status,
  ) {
    super(message);
  }
}

interface UntypedClient extends grpc.Client {
  [method: string]: unknown;
}

export class ControlClient {
  private readonly client: UntypedClient;

  constructor(
    readonly address: string,
    private readonly token: Credential,
    tls?: TlsFiles,
  ) {
    const credentials = tls ? grpc.credentials.createSsl(tls.ca, tls.key, tls.cert) : grpc.credentials.createInsecure();
    const Client = controlClient();
    this.client = new Client(address, credentials, CHANNEL_OPTIONS) as UntypedClient;
  }

  /** `waitForReady`: wait while the coordinator is unreachable (grpc-js takes it as a metadata option) instead of failing at once. */
  private metadata(waitForReady = false): grpc.Metadata {
    const m = new grpc.Metadata({ waitForReady });
    m.set('authorization', this.token.header());
    return m;
  }

  private unary<Req, Res>(method: string, request: Req, deadlineMs = UNARY_DEADLINE_MS, waitForReady = false): Promise<Res> {
    return new Promise((resolve, reject) => {
      const fn = this.client[method] as (r: Req, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, v: Res) => void) => void;
      fn.call(this.client, request, this.metadata(waitForReady), { deadline: Date.now() + deadlineMs }, (err, value) => (err ? reject(err) : resolve(value)));
    });
  }

  /** Joins the run; `waitMs`: how long to keep trying while the coordinator is not up yet. */
  async join(request: JoinRequest, waitMs = 30_000): Promise<JoinReply> {
    try {
      return await this.unary<JoinRequest, JoinReply>('Join', { ...request, protocol: request.protocol ?? CONTROL_PROTOCOL }, waitMs, true);
    } catch (e) {
      const err = e as grpc.ServiceError;
      // the status stays on the error for callers that act on it
      if (err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED) {
        throw new ControlError(`cannot reach the coordinator at ${this.address} within ${Math.round(waitMs / 1000)} s (${err.details || err.message})`, err.code);
      }
      if (err.code === grpc.status.UNAUTHENTICATED) {
        throw new ControlError(`the coordinator at ${this.address} refused this worker's join token: give the run's token (PRETRAIN_TOKEN_FILE)`, err.code);
      }
      if (err.code === grpc.status.FAILED_PRECONDITION) throw new ControlError(`the coordinator at ${this.address} refused this worker: ${err.details}`, err.code);
      throw e;
    }
  }

  instructions(workerId: number, dataAddress: string): grpc.ClientReadableStream<Instruction> {
    const fn = this.client['Instructions'] as (r: { workerId: number; dataAddress: string }, m: grpc.Metadata) => grpc.ClientReadableStream<Instruction>;
    return fn.call(this.client, { workerId, dataAddress }, this.metadata());
  }

  async heartbeat(request: HeartbeatRequest): Promise<void> {
    await this.unary('Heartbeat', request, 5_000);
  }

  /** Resolves with the coordinator's reason when it refuses the report as stale (fenced: another generation or step), which is no failure of this worker. */
  async report(report: StepReport): Promise<string | undefined> {
    try {
      await this.unary('Report', report);
      return undefined;
    } catch (e) {
      const err = e as grpc.ServiceError;
      if (err.code === grpc.status.FAILED_PRECONDITION) return err.details;
      throw e;
    }
  }

  /** The next records of the step in progress; none when nothing is left. Refusals (another generation or step) reject. */
  async claim(request: ClaimRequest): Promise<ClaimReply> {
    return this.unary<ClaimRequest, ClaimReply>('Claim', request);
  }

  /** Streams the chunks, honouring back-pressure. */
  putState(chunks: Iterable<StateChunk>): Promise<void> {
    return new Promise((resolve, reject) => {
      const fn = this.client['PutState'] as (m: grpc.Metadata, cb: (e: grpc.ServiceError | null) => void) => grpc.ClientWritableStream<StateChunk>;
      const call = fn.call(this.client, this.metadata(), (err) => (err ? reject(err) : resolve()));
      const iterator = chunks[Symbol.iterator]();
      const pump = (): void => {
        for (;;) {
          const next = iterator.next();
          if (next.done) return void call.end();
          if (!call.write(next.value)) return void call.once('drain', pump);
        }
      };
      pump();
    });
  }

  close(): void {
    this.client.close();
  }
}

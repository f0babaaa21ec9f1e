/**
 * The coordinator's side of the control plane: a grpc-js server that checks the join token
 * on every call, keeps one session per joined worker (its instruction stream, its last
 * heartbeat), and hands reports and state chunks to the coordinator. It decides nothing:
 * the coordinator does. It also serves the standard grpc.health.v1 service (src/control/health.ts),
 * without a token: ready once listening, not ready once closing.
 */
import * as grpc from '@grpc/grpc-js';
import { HealthStatus } from './health.js';
import {
  type Ack, type ClaimReply, type ClaimRequest, controlService, type HeartbeatRequest, type Instruction, type InstructionsRequest, type JoinReply, type JoinRequest,
  CONTROL_PROTOCOL, MAX_CONTROL_MESSAGE_BYTES, type StateChunk, type StepReport,
} from './messages.js';

/** The run's join token (src/comm/auth.ts JoinToken): checked in constant time, never logged. */
export interface Credential {
  header(): string;
  matches(header: string | undefined): boolean;
}

export interface TlsFiles {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
}

export interface WorkerSession {
  readonly id: number;
  readonly name: string;
  /** Set when its instruction stream opens. */
  dataAddress: string;
  /** What a worker joining again holds (JoinRequest): its run, last committed step, newest generation. */
  readonly heldRunId: string;
  readonly heldStep: number;
  readonly heldGeneration: number;
  readonly backend: string;
  lastHeartbeat: number;
  stream: grpc.ServerWritableStream<InstructionsRequest, Instruction> | undefined;
  /** Why the worker is gone (its stream ended, a missed heartbeat...), once it is. */
  gone: string | undefined;
}

export interface ControlHandlers {
  /** The worker's instruction stream is open: it can be given work. */
  onReady(session: WorkerSession): void;
  onGone(session: WorkerSession): void;
  /** Returns why the report is refused (another generation or step: fenced), or undefined when taken. */
  onReport(report: StepReport, session: WorkerSession): string | undefined;
  onStateChunk(chunk: StateChunk, session: WorkerSession): void;
  /** The next records of the step in progress for this worker (none when nothing is left), or why the claim is refused. */
  onClaim(request: ClaimRequest, session: WorkerSession): ClaimReply | string;
  /** The worker's state upload ended (all chunks sent) or failed. */
  onStateEnd(session: WorkerSession, error: Error | undefined): void;
}

export interface ControlServerOptions {
  readonly runId: string;
  readonly token: Credential;
  readonly tls?: TlsFiles | undefined;
  /** Default 127.0.0.1: a coordinator serves other hosts only when told. */
  readonly host?: string;
  readonly port?: number;
  readonly handlers: ControlHandlers;
}

type Callback<T> = (error: grpc.ServiceError | null, value?: T) => void;

function refuse(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}

export class ControlServer {
  readonly sessions = new Map<number, WorkerSession>();
  private nextId = 1;
  private closed = false;

  private constructor(
    private readonly server: grpc.Server,
    readonly address: string,
    private readonly options: ControlServerOptions,
    readonly health: HealthStatus,
  ) {}

  static async start(options: ControlServerOptions): Promise<ControlServer> {
    const server = new grpc.Server({ 'grpc.max_receive_message_length': MAX_CONTROL_MESSAGE_BYTES, 'grpc.max_send_message_length': MAX_CONTROL_MESSAGE_BYTES });
    const host = options.host ?? '127.0.0.1';
    const credentials = options.tls
      ? grpc.ServerCredentials.createSsl(options.tls.ca, [{ cert_chain: options.tls.cert, private_key: options.tls.key }], true)
      : grpc.ServerCredentials.createInsecure();
    const holder: { control?: ControlServer } = {};
    server.addService(controlService(), {
      Join: (call: grpc.ServerUnaryCall<JoinRequest, JoinReply>, callback: Callback<JoinReply>) => holder.control!.join(call, callback),
      Instructions: (call: grpc.ServerWritableStream<InstructionsRequest, Instruction>) => holder.control!.instructions(call),
      Heartbeat: (call: grpc.ServerUnaryCall<HeartbeatRequest, Ack>, callback: Callback<Ack>) => holder.control!.heartbeat(call, callback),
      Report: (call: grpc.ServerUnaryCall<StepReport, Ack>, callback: Callback<Ack>) => holder.control!.report(call, callback),
      PutState: (call: grpc.ServerReadableStream<StateChunk, Ack>, callback: Callback<Ack>) => holder.control!.putState(call, callback),
      Claim: (call: grpc.ServerUnaryCall<ClaimRequest, ClaimReply>, callback: Callback<ClaimReply>) => holder.control!.claim(call, callback),
    });
    const health = new HealthStatus();
    health.addTo(server);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`${host.includes(':') ? `[${host}]` : host}:${options.port ?? 0}`, credentials, (err, bound) => (err ? reject(err) : resolve(bound))),
    );
    holder.control = new ControlServer(server, `${host}:${port}`, options, health);
    health.setReady(true);
    return holder.control;
  }

  private authorized(metadata: grpc.Metadata): boolean {
    const header = metadata.get('authorization')[0];
    return this.options.token.matches(typeof header === 'string' ? header : undefined);
  }

  private session(workerId: number): WorkerSession | undefined {
    const s = this.sessions.get(workerId);
    return s && !s.gone ? s : undefined;
  }

  private join(call: grpc.ServerUnaryCall<JoinRequest, JoinReply>, callback: Callback<JoinReply>): void {
    if (!this.authorized(call.metadata)) return callback(refuse(grpc.status.UNAUTHENTICATED, 'wrong or missing join token'));
    if (this.closed) return callback(refuse(grpc.status.UNAVAILABLE, 'the coordinator is shutting down'));
    const r = call.request;
    if (r.protocol !== CONTROL_PROTOCOL) {
      return callback(refuse(grpc.status.FAILED_PRECONDITION, `the worker speaks control protocol ${r.protocol ?? 0}, this coordinator ${CONTROL_PROTOCOL}: run the same version of tfjs-pretrain on both`));
    }
    const now = Date.now();
    const session: WorkerSession = { id: this.nextId++, name: r.name.slice(0, 200), dataAddress: '', heldRunId: r.runId.slice(0, 100), heldStep: r.heldStep, heldGeneration: r.generation, backend: r.backend.slice(0, 40), lastHeartbeat: now, stream: undefined, gone: undefined };
    this.sessions.set(session.id, session);
    callback(null, { runId: this.options.runId, workerId: session.id });
  }

  private instructions(call: grpc.ServerWritableStream<InstructionsRequest, Instruction>): void {
    if (!this.authorized(call.metadata)) return void call.destroy(refuse(grpc.status.UNAUTHENTICATED, 'wrong or missing join token'));
    const session = this.session(call.request.workerId);
    if (!session || session.stream) return void call.destroy(refuse(grpc.status.FAILED_PRECONDITION, `worker ${call.request.workerId} has not joined, left, or already listens`));
    const address = call.request.dataAddress;
    if (!/^[\w.-]+:\d{1,5}$|^\[[\da-fA-F:.]+\]:\d{1,5}$/.test(address)) {
      return void call.destroy(refuse(grpc.status.INVALID_ARGUMENT, `data address ${JSON.stringify(address.slice(0, 80))} is not host:port`));
    }
    session.dataAddress = address;
    session.stream = call;
    const end = (why: string) => this.markGone(session, why);
    call.on('cancelled', () => end('its instruction stream was cancelled (the worker stopped or its connection broke)'));
    call.on('error', (e) => end(`its instruction stream failed: ${e.message}`));
    call.on('close', () => end('its instruction stream closed'));
    this.options.handlers.onReady(session);
  }

  /**
   * A unary call of a joined worker: the token checked, the worker's session found (and
   * heard from: any call counts as a heartbeat), then `answer` gives the reply or the reason
   * for refusing it (FAILED_PRECONDITION: fenced).
   */
  private memberCall<Req extends { workerId: number }, Res>(call: grpc.ServerUnaryCall<Req, Res>, callback: Callback<Res>, answer: (session: WorkerSession) => Res | string): void {
    if (!this.authorized(call.metadata)) return callback(refuse(grpc.status.UNAUTHENTICATED, 'wrong or missing join token'));
    const session = this.session(call.request.workerId);
    if (!session) return callback(refuse(grpc.status.NOT_FOUND, `worker ${call.request.workerId} is not part of the run`));
    session.lastHeartbeat = Date.now();
    const reply = answer(session);
    if (typeof reply === 'string') return callback(refuse(grpc.status.FAILED_PRECONDITION, reply));
    callback(null, reply);
  }

  private heartbeat(call: grpc.ServerUnaryCall<HeartbeatRequest, Ack>, callback: Callback<Ack>): void {
    this.memberCall(call, callback, () => ({}));
  }

  private report(call: grpc.ServerUnaryCall<StepReport, Ack>, callback: Callback<Ack>): void {
    this.memberCall(call, callback, (session) => this.options.handlers.onReport(call.request, session) ?? {});
  }

  private claim(call: grpc.ServerUnaryCall<ClaimRequest, ClaimReply>, callback: Callback<ClaimReply>): void {
    this.memberCall(call, callback, (session) => this.options.handlers.onClaim(call.request, session));
  }

  private putState(call: grpc.ServerReadableStream<StateChunk, Ack>, callback: Callback<Ack>): void {
    if (!this.authorized(call.metadata)) return callback(refuse(grpc.status.UNAUTHENTICATED, 'wrong or missing join token'));
    let session: WorkerSession | undefined;
    let failed: Error | undefined;
    call.on('data', (chunk: StateChunk) => {
      if (failed) return;
      session ??= this.session(chunk.workerId);
      if (!session || session.id !== chunk.workerId) {
        failed = new Error(`state chunk from worker ${chunk.workerId}, which is not part of the run`);
        return;
      }
      try {
        this.options.handlers.onStateChunk(chunk, session);
      } catch (e) {
        failed = e as Error;
      }
    });
    call.on('end', () => {
      if (session) this.options.handlers.onStateEnd(session, failed);
      callback(failed ? refuse(grpc.status.INVALID_ARGUMENT, failed.message) : null, {});
    });
    call.on('error', (e) => {
      if (session) this.options.handlers.onStateEnd(session, e);
    });
  }

  /** Sends an instruction to a worker; false when it is gone. */
  send(workerId: number, instruction: Instruction): boolean {
    const session = this.session(workerId);
    if (!session?.stream) return false;
    session.stream.write(instruction);
    return true;
  }

  markGone(session: WorkerSession, why: string): void {
    if (session.gone) return;
    session.gone = why;
    try {
      session.stream?.end();
    } catch {
      // the stream may already be torn down
    }
    this.options.handlers.onGone(session);
  }

  /** Ends every instruction stream and stops serving (bounded: forced after `graceMs`). */
  async close(graceMs = 2000): Promise<void> {
    this.closed = true;
    this.health.setReady(false);
    for (const s of this.sessions.values()) {
      if (!s.gone) {
        s.gone = 'the coordinator closed';
        try {
          s.stream?.end();
        } catch {
          // already torn down
        }
      }
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}


/**
 * The peer server of one worker process: it outlives generations (the worker keeps its
 * address), checks the join token on every call, fences calls by run id and generation,
 * and hands Pull calls to the Communicator of the current generation.
 */
import type { JoinToken, TlsMaterial } from './auth.js';
import { Status } from './errors.js';
import { decodePullRequest, decodeStatusRequest, encodeStatusReply, PULL_PATH, STATUS_PATH, type PullRequest, type StatusReply } from './proto.js';
import type { H2Stream, HeaderList } from './h2/session.js';
import { frameMessage, GrpcServer, MAX_REQUEST_BYTES, ServerCall } from './wire.js';

/** What the server needs of the communicator of a generation. */
export interface PullTarget {
  readonly runId: string;
  readonly generation: number;
  handlePull(request: PullRequest, call: ServerCall): void;
  status(): StatusReply;
}

export interface CommServerOptions {
  readonly runId: string;
  readonly token: JoinToken;
  readonly tls?: TlsMaterial | undefined;
  /** Default 127.0.0.1; 0.0.0.0 to serve other hosts. */
  readonly host?: string;
  /** Default 0: any free port. */
  readonly port?: number;
  /** The host peers dial, when it is not the listening host (a wildcard bind, a DNS name): default `host`. */
  readonly advertiseHost?: string;
  /** How long a Pull for a generation this process has not joined yet is held, at most. */
  readonly maxHoldMs?: number;
}

interface Held {
  request: PullRequest;
  call: ServerCall;
  timer: NodeJS.Timeout;
}

export class CommServer {
  #server: GrpcServer | undefined;
  readonly #held = new Set<Held>();
  #target: PullTarget | undefined;
  #newestGeneration = -1;

  private constructor(readonly options: CommServerOptions) {}

  static async listen(options: CommServerOptions): Promise<CommServer> {
    const self = new CommServer(options);
    self.#server = await GrpcServer.listen(options.host ?? '127.0.0.1', options.port ?? 0, options.tls, (stream, headers) => self.#onStream(stream, headers));
    return self;
  }

  get port(): number {
    return this.#server!.port;
  }

  /** host:port as peers should dial it (advertiseHost, else the listening host; 0.0.0.0 is only a wildcard). */
  get address(): string {
    const host = this.options.advertiseHost ?? this.options.host ?? '127.0.0.1';
    return `${host.includes(':') ? `[${host}]` : host}:${this.port}`;
  }

  get token(): JoinToken {
    return this.options.token;
  }

  get tls(): TlsMaterial | undefined {
    return this.options.tls;
  }

  /** Makes `target` the communicator of the newest generation; held calls for it are delivered. */
  attach(target: PullTarget): void {
    if (target.runId !== this.options.runId) throw new Error(`communicator of run '${target.runId}' on the server of run '${this.options.runId}'`);
    if (target.generation <= this.#newestGeneration) throw new Error(`generation ${target.generation} is not newer than ${this.#newestGeneration}`);
    this.#target = target;
    this.#newestGeneration = target.generation;
    for (const h of [...this.#held]) {
      if (h.request.generation <= target.generation) {
        this.#release(h);
        this.#dispatch(h.request, h.call);
      }
    }
  }

  detach(target: PullTarget): void {
    if (this.#target === target) this.#target = undefined;
  }

  async close(): Promise<void> {
    for (const h of [...this.#held]) {
      this.#release(h);
      h.call.finish(Status.UNAVAILABLE, 'the peer server is shutting down');
    }
    await this.#server!.close();
  }

  #onStream(stream: H2Stream, headers: HeaderList): void {
    const call = new ServerCall(stream);
    const path = headers[':path'];
    if (headers[':method'] !== 'POST' || !String(headers['content-type'] ?? '').startsWith('application/grpc')) {
      stream.sendHeaders([[':status', '415']], true);
      return;
    }
    // the token before anything else: no unauthenticated byte is parsed
    if (!this.options.token.matches(headers.authorization)) {
      call.finish(Status.UNAUTHENTICATED, 'missing or wrong join token: every call must carry the run\'s token ("authorization: Bearer <token>")');
      return;
    }
    if (path !== PULL_PATH && path !== STATUS_PATH) {
      call.finish(Status.UNIMPLEMENTED, `unknown method ${String(path)}`);
      return;
    }
    call.readRequest(
      MAX_REQUEST_BYTES,
      (bytes) => {
        try {
          if (path === PULL_PATH) this.#onPull(decodePullRequest(bytes), call);
          else this.#onStatus(decodeStatusRequest(bytes), call);
        } catch (e) {
          call.finish(Status.INVALID_ARGUMENT, (e as Error).message);
        }
      },
      (e) => call.finish(e.code, `request rejected: ${e.message}`),
    );
  }

  /** Run id first, then generation: a call from another run or an evicted member is refused here. */
  #fence(runId: string, generation: number, call: ServerCall): boolean {
    if (runId !== this.options.runId) {
      call.finish(Status.PERMISSION_DENIED, `run id '${runId}' is not this server's run: the caller belongs to another run`);
      return false;
    }
    if (generation < this.#newestGeneration) {
      call.finish(Status.FAILED_PRECONDITION, `generation ${generation} is stale (this rank is in generation ${this.#newestGeneration}): the caller was evicted; rejoin through the coordinator`);
      return false;
    }
    return true;
  }

  #onPull(request: PullRequest, call: ServerCall): void {
    if (!this.#fence(request.runId, request.generation, call)) return;
    this.#dispatch(request, call);
  }

  #dispatch(request: PullRequest, call: ServerCall): void {
    if (!call.open) return;
    const target = this.#target;
    if (target && request.generation === target.generation) return target.handlePull(request, call);
    if (request.generation < this.#newestGeneration || (target === undefined && request.generation === this.#newestGeneration)) {
      call.finish(Status.FAILED_PRECONDITION, `generation ${request.generation} is over on this rank`);
      return;
    }
    // a generation this process has not joined yet: hold the call until it does
    const held: Held = {
      request,
      call,
      timer: setTimeout(() => {
        this.#release(held);
        call.finish(Status.UNAVAILABLE, `this rank has not joined generation ${request.generation}`);
      }, this.options.maxHoldMs ?? 30_000),
    };
    held.timer.unref();
    this.#held.add(held);
    call.onClose(() => this.#release(held));
  }

  #release(h: Held): void {
    clearTimeout(h.timer);
    this.#held.delete(h);
  }

  #onStatus(request: { runId: string; generation: number }, call: ServerCall): void {
    if (request.runId !== this.options.runId) {
      call.finish(Status.PERMISSION_DENIED, `run id '${request.runId}' is not this server's run`);
      return;
    }
    const reply: StatusReply = this.#target?.status() ?? { runId: this.options.runId, generation: Math.max(0, this.#newestGeneration), rank: 0, sequence: 0, active: false };
    call.write([frameMessage(encodeStatusReply(reply))]);
    call.finish(Status.OK);
  }
}

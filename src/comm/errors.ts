/** gRPC status codes the data plane sends and understands (grpc/status.h). */
export const Status = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

export type StatusCode = (typeof Status)[keyof typeof Status];

export function statusName(code: number): string {
  return Object.entries(Status).find(([, v]) => v === code)?.[0] ?? `status ${code}`;
}

/** A call that ended with a non-OK gRPC status (ours or a stock gRPC peer's). */
export class RpcError extends Error {
  override name = 'RpcError';
  constructor(
    readonly code: number,
    readonly details: string,
    /** Trailing metadata; `comm-culprit-rank` is how an aborting rank passes on whom it blames. */
    readonly trailers: Readonly<Record<string, string>> = {},
  ) {
    super(`${statusName(code)}: ${details}`);
  }
}

/** Why a collective failed, as seen from the rank that reports it. */
export type FailureReason =
  | 'unreachable' // connection refused or lost: the peer process is gone
  | 'unresponsive' // connected but no answer within the probe: stopped or hung
  | 'behind' // answers, but has not entered this collective
  | 'rejected' // answered the call with an error status (auth, fencing, mismatch)
  | 'protocol' // sent something invalid (foreign run, wrong sequence, oversized, malformed)
  | 'aborted' // reported that the collective failed elsewhere
  | 'timeout' // the deadline passed
  | 'closed'; // this communicator was closed

export interface PeerRef {
  readonly rank: number;
  readonly address: string;
}

/**
 * A collective that did not complete. Buffers passed to it hold unspecified partial values:
 * discard the step's result (the coordinator aborts the step and re-forms the ring).
 */
export class CollectiveError extends Error {
  override name = 'CollectiveError';
  constructor(
    readonly op: string,
    readonly generation: number,
    readonly sequence: number,
    /** The rank held responsible; undefined only when this rank itself was closed. */
    readonly peer: PeerRef | undefined,
    readonly reason: FailureReason,
    readonly detail: string,
  ) {
    super(
      `${op} #${sequence} (generation ${generation}) failed: ` +
        (peer ? `rank ${peer.rank} (${peer.address}) ${describe(reason)}: ` : '') +
        `${detail}; the buffers hold partial values: discard this step and re-form the ring`,
    );
  }
}

function describe(reason: FailureReason): string {
  switch (reason) {
    case 'unreachable':
      return 'is unreachable';
    case 'unresponsive':
      return 'does not respond';
    case 'behind':
      return 'has not entered this collective';
    case 'rejected':
      return 'rejected the call';
    case 'protocol':
      return 'broke the protocol';
    case 'aborted':
      return 'aborted the collective';
    case 'timeout':
      return 'made no progress before the deadline';
    case 'closed':
      return 'closed';
  }
}

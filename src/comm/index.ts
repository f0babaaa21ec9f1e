/** Collective communication between the workers of a run (ring all-reduce over gRPC). */
export { AuthConfigError, JoinToken, loadTls, type TlsMaterial } from './auth.js';
export { Communicator, type AllReduceOptions, type CommunicatorOptions, type Compression } from './communicator.js';
export { CollectiveError, RpcError, Status, type FailureReason, type PeerRef } from './errors.js';
export { CommServer, type CommServerOptions } from './server.js';

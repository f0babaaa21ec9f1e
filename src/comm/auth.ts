/** The run's join token and optional mutual TLS: what every data-plane call must carry. */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';

export class AuthConfigError extends Error {
  override name = 'AuthConfigError';
}

/**
 * The join token, kept as its SHA-256 digest for comparison (equal-length digests make
 * timingSafeEqual applicable whatever the presented token's length). The token itself is
 * only ever put in the `authorization` header of outgoing calls; it is never logged and
 * toString/JSON hide it.
 */
export class JoinToken {
  readonly #token: string;
  readonly #digest: Buffer;

  constructor(token: string) {
    const t = token.trim();
    if (t.length < 16) throw new AuthConfigError('the join token must be at least 16 characters: generate one with `openssl rand -hex 32`');
    if (!/^[\x21-\x7e]+$/.test(t)) throw new AuthConfigError('the join token must be printable ASCII without spaces (it travels in an HTTP/2 header)');
    this.#token = t;
    this.#digest = createHash('sha256').update(t).digest();
  }

  /** From the file named by `fileVar` (preferred: a mounted Secret) or else the variable `envVar` itself. */
  static fromEnvironment(env: NodeJS.ProcessEnv = process.env, fileVar = 'COMM_TOKEN_FILE', envVar = 'COMM_TOKEN'): JoinToken {
    const file = env[fileVar];
    if (file) {
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch (e) {
        throw new AuthConfigError(`cannot read the join token file ${file} (${fileVar}): ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
      return new JoinToken(text);
    }
    const value = env[envVar];
    if (value) return new JoinToken(value);
    throw new AuthConfigError(`no join token: set ${fileVar} to a file holding it, or ${envVar}`);
  }

  /** The value for the `authorization` header. */
  header(): string {
    return `Bearer ${this.#token}`;
  }

  /** Constant-time check of a presented `authorization` header. */
  matches(header: string | undefined): boolean {
    if (typeof header !== 'string' || !header.startsWith('Bearer ')) return false;
    const digest = createHash('sha256').update(header.slice(7).trim()).digest();
    return timingSafeEqual(digest, this.#digest);
  }

  toString(): string {
    return 'JoinToken(<hidden>)';
  }

  toJSON(): string {
    return '<hidden>';
  }
}

/** PEM material for mutual TLS: every rank presents a certificate signed by the run's CA and checks its peers'. */
export interface TlsMaterial {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
}

/** Reads `--tls-ca`, `--tls-cert` and `--tls-key` files; all three or none. */
export function loadTls(paths: { ca?: string | undefined; cert?: string | undefined; key?: string | undefined }): TlsMaterial | undefined {
  const given = [paths.ca, paths.cert, paths.key].filter((p) => p !== undefined && p !== '');
  if (given.length === 0) return undefined;
  if (given.length !== 3) throw new AuthConfigError('mutual TLS needs all three of --tls-ca, --tls-cert and --tls-key');
  const read = (what: string, path: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (e) {
      throw new AuthConfigError(`cannot read the TLS ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  };
  return { ca: read('CA certificate', paths.ca!), cert: read('certificate', paths.cert!), key: read('key', paths.key!) };
}

/**
 * Where the run's join token comes from, for the coordinator and the workers alike: a
 * file (`--token-file`, else the file named by PRETRAIN_TOKEN_FILE, a mounted Secret), else
 * the PRETRAIN_TOKEN variable; never the command line, which `ps` shows to every user.
 */
import { JoinToken } from '../comm/auth.js';

export const TOKEN_FILE_ENV = 'PRETRAIN_TOKEN_FILE';
export const TOKEN_ENV = 'PRETRAIN_TOKEN';

/** The environment to read the token from, with `--token-file` taking the variable's place. */
export function tokenEnvironment(tokenFile: string | undefined, env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return tokenFile ? { ...env, [TOKEN_FILE_ENV]: tokenFile } : env;
}

/** Whether that environment names a token at all. */
export function tokenGiven(env: NodeJS.ProcessEnv): boolean {
  return Boolean(env[TOKEN_FILE_ENV] || env[TOKEN_ENV]);
}

/** The token (AuthConfigError when none is given or the file cannot be read). */
export function readRunToken(env: NodeJS.ProcessEnv): JoinToken {
  return JoinToken.fromEnvironment(env, TOKEN_FILE_ENV, TOKEN_ENV);
}

// A real OpenID provider for the single sign-on tests: panva's certified `oidc-provider`, with its development
// login form (any password; the login names below are the accounts), two clients and short lifetimes.
// Started by tests/oidc_support.py as `node provider.mjs`; configured by environment variables:
//   OIDC_PORT               port on 127.0.0.1 to listen on (required)
//   OIDC_REDIRECT_URIS      space-separated redirect URIs of the `casebook` client
//   OIDC_LOGOUT_URIS        space-separated post-logout redirect URIs of the `casebook` client
//   OIDC_ID_TOKEN_TTL       seconds an ID token is valid (default 60)
//   OIDC_CLOCK_SKEW         seconds the provider's clock runs behind when it issues tokens (default 0): its ID
//                           tokens are born in the past (only at the token endpoint: its cookies stay usable)
//   OIDC_KEYS               JSON list of private JWKs to sign with (the first signs); default: one generated key
//                           (the tests pass their own, so that a restarted provider keeps its keys or rotates them)

import Provider from 'oidc-provider';
import { generateKeyPair, exportJWK } from 'jose';

const skew = Number(process.env.OIDC_CLOCK_SKEW || 0) * 1000;

const port = Number(process.env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;
const words = (value) => (value || '').split(' ').filter(Boolean);

// The accounts the provider knows; any other login name is refused at the token (no such account).
const USERS = {
  ada: { preferred_username: 'ada', name: 'Dr. Ada Lovelace' },
  grace: { preferred_username: 'grace', name: 'Dr. Grace Hopper' },
  newcomer: { preferred_username: 'newcomer', name: 'Dr. New Comer' },
  disabled: { preferred_username: 'disabled', name: 'Dr. Dis Abled' },
  breakglass: { preferred_username: 'breakglass', name: 'Break Glass' },
};

async function signingKey(kid) {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  return { ...(await exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };
}

const keys = process.env.OIDC_KEYS ? JSON.parse(process.env.OIDC_KEYS) : [await signingKey('first')];

const configuration = {
  clients: [
    {
      client_id: 'casebook',
      client_secret: 'casebook-test-secret-0123456789',
      redirect_uris: words(process.env.OIDC_REDIRECT_URIS),
      post_logout_redirect_uris: words(process.env.OIDC_LOGOUT_URIS),
      grant_types: ['authorization_code'],
      response_types: ['code'],
    },
    {
      client_id: 'other-app', // another application of the same provider: its tokens are not for Casebook
      client_secret: 'other-app-test-secret-0123456789',
      redirect_uris: ['http://127.0.0.1/other-app/callback'],
      grant_types: ['authorization_code'],
      response_types: ['code'],
    },
  ],
  jwks: { keys },
  pkce: { required: () => true },
  conformIdTokenClaims: false, // name and preferred_username in the ID token itself
  claims: { openid: ['sub'], profile: ['name', 'preferred_username'] },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  ttl: {
    IdToken: Number(process.env.OIDC_ID_TOKEN_TTL || 60),
    AccessToken: 60,
    AuthorizationCode: 30,
    Interaction: 300,
    Session: 3600,
    Grant: 3600,
  },
  cookies: { keys: ['casebook-oidc-test-cookie-key'] },
  async findAccount(ctx, sub) {
    const claims = USERS[sub];
    if (!claims) return undefined;
    return { accountId: sub, claims: async () => ({ sub, ...claims }) };
  },
  async loadExistingGrant(ctx) {
    // No consent screen: the test clients are the provider's own applications.
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile');
    await grant.save();
    return grant;
  },
};

const provider = new Provider(issuer, configuration);
if (skew) {
  const realNow = Date.now;
  provider.use(async (ctx, next) => {
    if (ctx.path !== '/token') return next();
    Date.now = () => realNow() - skew; // the tests send one request at a time
    try {
      return await next();
    } finally {
      Date.now = realNow;
    }
  });
}
provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});

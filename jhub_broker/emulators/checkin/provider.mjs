// EGI Check-in stand-in: the certified `oidc-provider` package, served at /auth/realms/egi.
// Usage: node provider.mjs --config config.json   (see __init__.py for the config shape)
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { pathToFileURL } from 'node:url';
import querystring from 'node:querystring';

const args = process.argv.slice(2);
const cfgPath = args[args.indexOf('--config') + 1];
const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
const modulesDir = cfg.node_modules || process.env.JHUB_BROKER_NODE_MODULES;
const { default: Provider } = await import(pathToFileURL(path.join(modulesDir, 'oidc-provider', 'lib', 'index.js')).href);

const accounts = JSON.parse(fs.readFileSync(cfg.accounts_file, 'utf8')).accounts;
const byName = new Map(accounts.map((a) => [a.username, a]));
const bySub = new Map(accounts.map((a) => [a.sub, a]));
const prefix = cfg.path || '/auth/realms/egi';
const autoConsent = new Set(cfg.clients.filter((c) => c.auto_consent !== false).map((c) => c.client_id));
const ttl = cfg.ttl || {};

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: cfg.kid || `stand-in-${crypto.randomBytes(4).toString('hex')}`, use: 'sig', alg: 'RS256' };

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

const provider = new Provider(`http://${cfg.host}:${cfg.port}${prefix}`, {
  clients: cfg.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    grant_types: c.grant_types || ['authorization_code', 'refresh_token'],
    response_types: c.response_types || ['code'],
    token_endpoint_auth_method: c.token_endpoint_auth_method || 'client_secret_basic',
  })),
  jwks: { keys: [jwk] },
  cookies: { keys: [crypto.randomBytes(16).toString('hex')] },
  scopes: ['openid', 'profile', 'email', 'eduperson_entitlement', 'offline_access', 'voperson_id'],
  claims: {
    openid: ['sub'],
    // `groups` only for accounts that have one (Check-in sends none; other OIDC providers do)
    profile: ['name', 'given_name', 'family_name', 'preferred_username', 'groups'],
    email: ['email', 'email_verified'],
    eduperson_entitlement: ['eduperson_entitlement'],
    voperson_id: ['voperson_id'],
  },
  conformIdTokenClaims: false,   // Check-in puts eduperson_entitlement in the id_token too
  // as Check-in: every authorization-code request must carry a PKCE challenge (oidc-provider takes S256 only)
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    // only when a client asks for it (a client that may not log users in, for the broker's OAuth test)
    clientCredentials: { enabled: cfg.clients.some((c) => (c.grant_types || []).includes('client_credentials')) },
  },
  issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  rotateRefreshToken: () => cfg.rotate_refresh_tokens !== false,
  ttl: {
    AccessToken: ttl.access_token || 3600,
    IdToken: ttl.id_token || ttl.access_token || 3600,
    AuthorizationCode: 60,
    RefreshToken: ttl.refresh_token || 86400,
    Grant: 86400, Session: 86400, Interaction: 600,
  },
  interactions: { url: (ctx, interaction) => `${prefix}/interaction/${interaction.uid}` },
  async findAccount(ctx, sub) {
    const a = bySub.get(sub);
    if (!a) return undefined;
    return {
      accountId: sub,
      async claims() {
        return {
          sub: a.sub, voperson_id: a.sub, name: a.name, preferred_username: a.username,
          given_name: a.name?.split(' ')[0], family_name: a.name?.split(' ').slice(1).join(' '),
          email: a.email, email_verified: true, eduperson_entitlement: a.entitlements || [],
          ...(a.groups ? { groups: a.groups } : {}),
        };
      },
    };
  },
});
provider.proxy = true;

function loginPage(uid, error) {
  return `<!DOCTYPE html><html><head><title>EGI Check-in (local stand-in)</title></head><body>
<h1>EGI Check-in (local stand-in)</h1>${error ? `<p class="error">${escape(error)}</p>` : ''}
<form method="post" action="${prefix}/interaction/${escape(uid)}/login">
<label>Username <input name="username" autofocus></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Log in</button></form></body></html>`;
}

function consentPage(uid, client, scopes) {
  return `<!DOCTYPE html><html><body><h1>Allow ${escape(client)}?</h1><p>Scopes: ${escape(scopes)}</p>
<form method="post" action="${prefix}/interaction/${escape(uid)}/confirm"><button type="submit">Allow</button></form></body></html>`;
}

async function grantConsent(req, res, details) {
  const { prompt: { details: missing }, params, session: { accountId }, grantId } = details;
  const grant = grantId ? await provider.Grant.find(grantId) : new provider.Grant({ accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, s] of Object.entries(missing.missingResourceScopes)) grant.addResourceScope(indicator, s.join(' '));
  }
  await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
}

function readBody(req) {
  return new Promise((resolve) => { let b = ''; req.on('data', (c) => { b += c; }); req.on('end', () => resolve(querystring.parse(b))); });
}

const send = (res, status, html) => { res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8' }); res.end(html); };
const callback = provider.callback();

const server = http.createServer(async (req, res) => {
  try {
    const m = req.url.match(new RegExp(`^${prefix}/interaction/([^/?]+)(/login|/confirm)?(\\?.*)?$`));
    if (m) {
      const details = await provider.interactionDetails(req, res);
      if (details.uid !== m[1]) return send(res, 400, 'interaction mismatch');
      if (details.prompt.name === 'login') {
        if (req.method === 'POST' && m[2] === '/login') {
          const form = await readBody(req);
          const a = byName.get(form.username);
          if (!a || a.password !== form.password) return send(res, 200, loginPage(m[1], 'Wrong username or password'));
          return await provider.interactionFinished(req, res, { login: { accountId: a.sub } }, { mergeWithLastSubmission: false });
        }
        return send(res, 200, loginPage(m[1]));
      }
      if (details.prompt.name === 'consent') {
        if (autoConsent.has(details.params.client_id) || (req.method === 'POST' && m[2] === '/confirm')) {
          return await grantConsent(req, res, details);
        }
        return send(res, 200, consentPage(m[1], details.params.client_id, details.params.scope));
      }
      return send(res, 400, 'unknown prompt');
    }
    if (req.url.startsWith(prefix + '/') || req.url === prefix) {
      req.originalUrl = req.url;
      req.url = req.url.slice(prefix.length) || '/';
      // Check-in (Keycloak) issues offline tokens without prompt=consent; oidc-provider drops
      // offline_access unless consent is prompted, so ask for it here (our clients auto-consent).
      const u = new URL(req.url, 'http://x');
      if (u.pathname === '/auth' && (u.searchParams.get('scope') || '').split(' ').includes('offline_access')
          && !u.searchParams.get('prompt')) {
        u.searchParams.set('prompt', 'consent');
        req.url = u.pathname + u.search;
        req.originalUrl = prefix + req.url;
      }
      return callback(req, res);
    }
    return send(res, 404, 'not found');
  } catch (err) {
    console.error('request failed:', err.name, err.message);
    if (!res.headersSent) send(res, 500, 'error');
  }
});
server.listen(cfg.port, cfg.host, () => { console.log(`listening ${cfg.host}:${cfg.port}${prefix}`); });
process.on('SIGTERM', () => { server.close(); process.exit(0); });

// An OpenID Provider for the gateway's end-to-end tests: panva's oidc-provider (an OpenID
// Certified implementation), configured from Keycloak realm exports so that its tokens look
// like Keycloak's, served on loopback.
//
//   node provider.mjs CONFIG.json      (prints one JSON line {"url": ...} once it listens)
//
// CONFIG: {"host": "127.0.0.1", "port": 0, "realms": [{"export": "realm.json",
//          "keysOf": "other-realm"?}]}; the admin token comes from $OIDC_ADMIN_TOKEN.
//
// Each realm is served at /realms/<name> (Keycloak's issuer path). What is read from the
// export, as Keycloak reads it:
// - realm: realm, accessTokenLifespan, roles.realm, roles.client;
// - clients: clientId, enabled, publicClient, bearerOnly (no tokens), secret,
//   standardFlowEnabled, serviceAccountsEnabled, redirectUris ("/*" suffix: a prefix),
//   webOrigins ("+": the redirect URIs' origins), attributes "pkce.code.challenge.method",
//   "access.token.lifespan", "post.logout.redirect.uris" ("##"-separated), and the protocol
//   mappers oidc-audience-mapper, oidc-usermodel-attribute-mapper, oidc-hardcoded-claim-mapper;
// - users: id, username, enabled, email, firstName, lastName, attributes, realmRoles,
//   clientRoles, credentials (type "password", value), serviceAccountClientId.
// Access tokens are RS256 JWTs with Keycloak's claims: iss, sub, aud (audience mappers, else
// "account"), azp, typ "Bearer", preferred_username, realm_access.roles,
// resource_access.<client>.roles, scope, and the mappers' claims.
//
// The login page has Keycloak's form (#username, #password, #kc-login); consent is not asked
// (Keycloak's consentRequired: false). The password grant is not offered (oidc-provider has none).
//
// Admin API (loopback, "Authorization: Bearer $OIDC_ADMIN_TOKEN"), for the tests:
//   POST /admin/realms/<realm>/keys/rotate   a new RSA key signs; the old ones stay in the JWKS
//   POST /admin/realms/<realm>/keys/retire   keys other than the signing key leave the JWKS
//   GET  /admin/requests                     the requests served so far (method, path, user agent)
// A key set change builds the realm's provider again; sessions, grants and codes live in
// oidc-provider's memory adapter, which all providers of this process share.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
config.host = config.host || '127.0.0.1';
const adminToken = process.env.OIDC_ADMIN_TOKEN || '';
const cookieKeys = [crypto.randomBytes(32).toString('base64url')];
const requestLog = [];

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomBytes(16).toString('base64url'),
    use: 'sig', alg: 'RS256' };
}

const escape = (s) => String(s).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
const first = (value) => (Array.isArray(value) ? value[0] : value);

// --- the realm, as Keycloak reads its export ----------------------------------------------

class Realm {
  constructor(spec) {
    this.export = JSON.parse(fs.readFileSync(spec.export, 'utf8'));
    this.name = this.export.realm;
    this.keysOf = spec.keysOf || this.name; // several issuers may share one key set
    this.clients = new Map((this.export.clients || []).filter((c) => c.enabled !== false)
      .map((c) => [c.clientId, c]));
    this.users = new Map((this.export.users || []).filter((u) => u.enabled !== false)
      .map((u) => [u.username, u]));
    this.realmRoles = new Set((this.export.roles?.realm || []).map((r) => r.name));
    this.clientRoles = new Map(Object.entries(this.export.roles?.client || {})
      .map(([client, roles]) => [client, new Set(roles.map((r) => r.name))]));
  }

  get mount() { return `/realms/${this.name}`; }

  serviceAccount(clientId) {
    return [...this.users.values()].find((u) => u.serviceAccountClientId === clientId);
  }

  userById(id) {
    return [...this.users.values()].find((u) => (u.id || u.username) === id);
  }

  mappers(client, type) {
    return (client?.protocolMappers || []).filter((m) => m.protocolMapper === type
      && m.config?.['access.token.claim'] !== 'false');
  }

  audiences(client) {
    const named = this.mappers(client, 'oidc-audience-mapper').map((m) => m.config['included.client.audience']);
    return named.length ? named : ['account']; // Keycloak's aud without an audience mapper
  }

  // Claims of an access token of `user` (a person or a client's service account) for `client`.
  accessClaims(user, client) {
    const claims = { typ: 'Bearer', azp: client.clientId, preferred_username: user.username };
    if (user.email) claims.email = user.email;
    const realmRoles = (user.realmRoles || []).filter((r) => this.realmRoles.has(r));
    claims.realm_access = { roles: realmRoles };
    const access = {};
    for (const [name, roles] of Object.entries(user.clientRoles || {})) {
      const known = roles.filter((r) => this.clientRoles.get(name)?.has(r));
      if (known.length) access[name] = { roles: known };
    }
    claims.resource_access = access;
    for (const m of this.mappers(client, 'oidc-usermodel-attribute-mapper')) {
      const value = user.attributes?.[m.config['user.attribute']];
      if (value !== undefined) claims[m.config['claim.name']] = m.config.multivalued === 'true' ? value : first(value);
    }
    for (const m of this.mappers(client, 'oidc-hardcoded-claim-mapper')) {
      claims[m.config['claim.name']] = m.config['claim.value'];
    }
    return claims;
  }

  lifespan(client) {
    return Number(client?.attributes?.['access.token.lifespan'] || this.export.accessTokenLifespan || 300);
  }

  // Keycloak's client → oidc-provider's client metadata.
  oidcClient(c) {
    const grants = [];
    if (c.standardFlowEnabled !== false && (c.redirectUris || []).length) grants.push('authorization_code', 'refresh_token');
    if (c.serviceAccountsEnabled && !c.publicClient) grants.push('client_credentials');
    const logout = this.logoutPatterns(c);
    return {
      client_id: c.clientId,
      ...(c.publicClient ? { token_endpoint_auth_method: 'none' }
        : { client_secret: c.secret, token_endpoint_auth_method: 'client_secret_basic' }),
      grant_types: grants,
      response_types: grants.includes('authorization_code') ? ['code'] : [],
      redirect_uris: (c.redirectUris || []).map((u) => u.replace(/\/\*$/, '/')),
      post_logout_redirect_uris: logout.map((u) => u.replace(/\/\*$/, '/')),
    };
  }

  // "+": the redirect URIs, as in Keycloak.
  logoutPatterns(c) {
    return (c?.attributes?.['post.logout.redirect.uris'] || '').split('##').filter(Boolean)
      .flatMap((p) => (p === '+' ? c.redirectUris || [] : [p]));
  }

  uriAllowed(patterns, value) {
    return (patterns || []).some((p) => (p.endsWith('/*') ? value.startsWith(p.slice(0, -1)) : value === p));
  }

  originAllowed(clientId, origin) {
    const c = this.clients.get(clientId);
    if (!c) return false;
    const redirectOrigins = (c.redirectUris || []).map((u) => { try { return new URL(u.replace(/\*$/, '')).origin; } catch { return null; } });
    return (c.webOrigins || []).some((o) => o === '*' || o === origin || (o === '+' && redirectOrigins.includes(origin)));
  }
}

// --- one oidc-provider per realm -----------------------------------------------------------

function passwordMatches(user, given) {
  const stored = (user.credentials || []).find((c) => c.type === 'password')?.value;
  if (typeof stored !== 'string' || typeof given !== 'string') return false;
  const digest = (s) => crypto.createHash('sha256').update(s).digest();
  return crypto.timingSafeEqual(digest(stored), digest(given));
}

function buildProvider(realm, issuer, keys) {
  const resourceOf = (client) => `urn:${realm.name}:${client.clientId}`;
  const provider = new Provider(issuer, {
    clients: [...realm.clients.values()].filter((c) => !c.bearerOnly).map((c) => realm.oidcClient(c)),
    jwks: { keys },
    cookies: { keys: cookieKeys },
    findAccount(ctx, id) {
      const user = realm.userById(id);
      if (!user) return undefined;
      return {
        accountId: id,
        claims: () => ({
          sub: id, preferred_username: user.username, email: user.email,
          given_name: user.firstName, family_name: user.lastName,
          name: [user.firstName, user.lastName].filter(Boolean).join(' ') || undefined,
        }),
      };
    },
    claims: { openid: ['sub'], profile: ['preferred_username', 'name', 'given_name', 'family_name'], email: ['email'] },
    conformIdTokenClaims: false, // Keycloak puts the profile claims in the ID token too
    responseTypes: ['code'],
    pkce: {
      methods: ['S256'],
      required: (ctx, client) => client.clientAuthMethod === 'none'
        || !!realm.clients.get(client.clientId)?.attributes?.['pkce.code.challenge.method'],
    },
    clientBasedCORS: (ctx, origin, client) => realm.originAllowed(client.clientId, origin),
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      revocation: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Keycloak has no resource parameter: every token of a client is for that client's audience.
        defaultResource: (ctx, client) => resourceOf(client),
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator, client) => {
          if (indicator !== resourceOf(client)) throw new errors.InvalidTarget();
          const c = realm.clients.get(client.clientId);
          return {
            scope: 'profile email', audience: realm.audiences(c)[0], accessTokenFormat: 'jwt',
            accessTokenTTL: realm.lifespan(c), jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    formats: {
      customizers: {
        async jwt(ctx, token, jwt) {
          const client = realm.clients.get(token.clientId);
          const user = token.accountId ? realm.userById(token.accountId) : realm.serviceAccount(token.clientId);
          if (user) {
            Object.assign(jwt.payload, realm.accessClaims(user, client));
            if (!token.accountId) jwt.payload.sub = user.id || user.username;
          }
          const audiences = realm.audiences(client);
          jwt.payload.aud = audiences.length === 1 ? audiences[0] : audiences;
        },
      },
    },
    ttl: {
      AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL || realm.lifespan(),
      ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || realm.lifespan(),
      IdToken: () => realm.lifespan(),
      Interaction: () => 600,
      Session: () => 3600,
      Grant: () => 3600,
    },
    routes: { // Keycloak's endpoint paths (discovery names them anyway)
      authorization: '/protocol/openid-connect/auth',
      token: '/protocol/openid-connect/token',
      jwks: '/protocol/openid-connect/certs',
      userinfo: '/protocol/openid-connect/userinfo',
      end_session: '/protocol/openid-connect/logout',
      revocation: '/protocol/openid-connect/revoke',
    },
    interactions: { url: (ctx, interaction) => `${realm.mount}/interaction/${interaction.uid}` },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = `<!doctype html><title>Error</title><h1 id="error">${escape(out.error)}</h1>`
        + `<p id="error-description">${escape(out.error_description || '')}</p>`;
    },
  });
  // Keycloak's redirect URIs may end in "/*" (any path below).
  const { Client } = provider;
  const exactRedirect = Client.prototype.redirectUriAllowed;
  Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
    return realm.uriAllowed(realm.clients.get(this.clientId)?.redirectUris, value) || exactRedirect.call(this, value);
  };
  const exactLogout = Client.prototype.postLogoutRedirectUriAllowed;
  Client.prototype.postLogoutRedirectUriAllowed = function postLogoutRedirectUriAllowed(value) {
    return realm.uriAllowed(realm.logoutPatterns(realm.clients.get(this.clientId)), value)
      || exactLogout.call(this, value);
  };
  return provider;
}

// --- the login page ----------------------------------------------------------------------------

function loginPage(realm, uid, clientId, error) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Sign in to ${escape(realm.name)}</title></head>
<body><h1 id="kc-page-title">Sign in to your account</h1><p id="kc-client">${escape(clientId)}</p>
${error ? `<p id="input-error" role="alert">${escape(error)}</p>` : ''}
<form id="kc-form-login" method="post" action="${realm.mount}/interaction/${escape(uid)}/login">
<label for="username">Username</label><input id="username" name="username" autocomplete="username" autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password">
<input id="kc-login" name="login" type="submit" value="Sign In">
</form></body></html>`;
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

async function interaction(state, req, res, uid, step) {
  const { provider, realm } = state;
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, 'interaction mismatch', 'text/plain');
  const { prompt, params } = details;
  if (prompt.name === 'login') {
    if (req.method === 'POST' && step === 'login') {
      const form = await readForm(req);
      const user = realm.users.get(form.username);
      if (!user || user.serviceAccountClientId || !passwordMatches(user, form.password)) {
        return send(res, 200, loginPage(realm, uid, params.client_id, 'Invalid username or password.'));
      }
      return provider.interactionFinished(req, res, { login: { accountId: user.id || user.username } },
        { mergeWithLastSubmission: false });
    }
    return send(res, 200, loginPage(realm, uid, params.client_id));
  }
  if (prompt.name === 'consent') { // granted without asking, as Keycloak does with consentRequired: false
    const grant = details.grantId ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    return provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } },
      { mergeWithLastSubmission: true });
  }
  return send(res, 400, `unknown prompt ${escape(prompt.name)}`, 'text/plain');
}

// --- the server ------------------------------------------------------------------------------

const realms = new Map(); // name -> {realm, provider, handler}
const keySets = new Map(); // name -> [private JWK, ...], the first signs

function build(name, origin) {
  const state = realms.get(name);
  state.provider = buildProvider(state.realm, origin + state.realm.mount, keySets.get(state.realm.keysOf));
  state.handler = state.provider.callback();
}

function rebuildUsing(keySetName, origin) {
  for (const [name, state] of realms) if (state.realm.keysOf === keySetName) build(name, origin);
}

function admin(req, res, url, origin) {
  const given = Buffer.from(req.headers.authorization || '');
  const wanted = Buffer.from(`Bearer ${adminToken}`);
  if (!adminToken || given.length !== wanted.length || !crypto.timingSafeEqual(given, wanted)) {
    return send(res, 401, JSON.stringify({ error: 'admin token required' }), 'application/json');
  }
  if (req.method === 'GET' && url.pathname === '/admin/requests') {
    return send(res, 200, JSON.stringify(requestLog), 'application/json');
  }
  const match = /^\/admin\/realms\/([^/]+)\/keys\/(rotate|retire)$/.exec(url.pathname);
  const state = match && realms.get(match[1]);
  if (req.method !== 'POST' || !state) return send(res, 404, JSON.stringify({ error: 'no such admin resource' }), 'application/json');
  const setName = state.realm.keysOf;
  const keys = keySets.get(setName);
  keySets.set(setName, match[2] === 'rotate' ? [newKey(), ...keys] : keys.slice(0, 1));
  rebuildUsing(setName, origin);
  return send(res, 200, JSON.stringify({ kids: keySets.get(setName).map((k) => k.kid) }), 'application/json');
}

for (const spec of config.realms) {
  const realm = new Realm(spec);
  realms.set(realm.name, { realm });
  if (!keySets.has(realm.keysOf)) keySets.set(realm.keysOf, [newKey()]);
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://placeholder');
  const origin = `http://${config.host}:${server.address().port}`;
  if (requestLog.length < 100000) requestLog.push({ method: req.method, path: url.pathname, userAgent: req.headers['user-agent'] || '' });
  try {
    if (url.pathname.startsWith('/admin/')) return admin(req, res, url, origin);
    const [, name, rest = ''] = /^\/realms\/([^/]+)(\/.*)?$/.exec(url.pathname) || [];
    const state = name && realms.get(name);
    if (!state) return send(res, 404, JSON.stringify({ error: 'Realm does not exist' }), 'application/json');
    const step = /^\/interaction\/([^/]+)(?:\/(login))?$/.exec(rest);
    if (step) return await interaction(state, req, res, step[1], step[2]);
    // Mounted below /realms/<name>: oidc-provider reads the mount path from originalUrl.
    req.originalUrl = req.url;
    req.url = req.url.slice(state.realm.mount.length) || '/';
    return state.handler(req, res);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) send(res, 500, JSON.stringify({ error: 'server_error', error_description: String(err.message) }), 'application/json');
    else res.end();
  }
});

server.listen(config.port || 0, config.host, () => {
  const origin = `http://${config.host}:${server.address().port}`;
  for (const name of realms.keys()) build(name, origin);
  process.stdout.write(`${JSON.stringify({ url: origin, realms: [...realms.keys()] })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));

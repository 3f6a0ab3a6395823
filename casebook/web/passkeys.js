// Passkeys in the browser (casebook/web/passkeys_ui.py calls these through ui.run_javascript).
//
// create(optionsJson) and get(optionsJson) take the options py_webauthn made (options_to_json: base64url for every
// binary field), ask the browser's WebAuthn prompt, and resolve to a JSON string of the credential in the shape
// py_webauthn's verify_*_response reads (base64url fields, response.transports where the browser tells them).
// When the browser refuses they resolve to {"error": NAME, "message": TEXT}: NotAllowedError (cancelled, timed
// out, no passkey chosen), SecurityError (the page's address is not the relying party's), InvalidStateError (this
// authenticator holds one of the clinician's passkeys already), NotSupportedError (no WebAuthn here: an old
// browser, or an insecure context: not HTTPS and not localhost). They never reject: the server waits for an answer.
window.casebookPasskey = (() => {
  const toBytes = (text) => {
    const base64 = text.replace(/-/g, '+').replace(/_/g, '/');
    const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  };
  const toText = (buffer) => {
    if (!buffer) return null;
    const bytes = new Uint8Array(buffer);
    let binary = '';
    for (let i = 0; i < bytes.length; i += 1) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  };
  const refusal = (name, message) => JSON.stringify({ error: String(name || 'Error'), message: String(message || '') });
  const supported = () =>
    window.isSecureContext && !!window.PublicKeyCredential && !!navigator.credentials && !!navigator.credentials.get;
  const unsupported = () =>
    refusal('NotSupportedError', 'This browser cannot use passkeys here (it needs HTTPS, or localhost).');
  const descriptors = (list) => (list || []).map((item) => ({ ...item, id: toBytes(item.id) }));
  const common = (credential) => ({
    id: credential.id,
    rawId: toText(credential.rawId),
    type: credential.type,
    clientExtensionResults: credential.getClientExtensionResults ? credential.getClientExtensionResults() : {},
    authenticatorAttachment: credential.authenticatorAttachment || undefined,
  });

  async function create(optionsJson) {
    if (!supported()) return unsupported();
    try {
      const options = JSON.parse(optionsJson);
      const publicKey = {
        ...options,
        challenge: toBytes(options.challenge),
        user: { ...options.user, id: toBytes(options.user.id) },
        excludeCredentials: descriptors(options.excludeCredentials),
      };
      const credential = await navigator.credentials.create({ publicKey });
      if (!credential) return refusal('NotAllowedError', 'No passkey was made.');
      const response = credential.response;
      return JSON.stringify({
        ...common(credential),
        response: {
          clientDataJSON: toText(response.clientDataJSON),
          attestationObject: toText(response.attestationObject),
          transports: typeof response.getTransports === 'function' ? response.getTransports() : [],
        },
      });
    } catch (error) {
      return refusal(error && error.name, error && error.message);
    }
  }

  async function get(optionsJson) {
    if (!supported()) return unsupported();
    try {
      const options = JSON.parse(optionsJson);
      const publicKey = { ...options, challenge: toBytes(options.challenge) };
      if (options.allowCredentials) publicKey.allowCredentials = descriptors(options.allowCredentials);
      const credential = await navigator.credentials.get({ publicKey });
      if (!credential) return refusal('NotAllowedError', 'No passkey was used.');
      const response = credential.response;
      return JSON.stringify({
        ...common(credential),
        response: {
          clientDataJSON: toText(response.clientDataJSON),
          authenticatorData: toText(response.authenticatorData),
          signature: toText(response.signature),
          userHandle: toText(response.userHandle),
        },
      });
    } catch (error) {
      return refusal(error && error.name, error && error.message);
    }
  }

  return { create, get };
})();

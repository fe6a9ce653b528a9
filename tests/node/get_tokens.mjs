// Run by tests/test_exec_node.py as the child of `aadhelper exec PROFILE -- node get_tokens.mjs CREDENTIAL RESOURCE...`:
// gets a token for each RESOURCE ("R" asks for scope "R/.default") with @azure/identity's real CREDENTIAL
// ("ManagedIdentityCredential" or "DefaultAzureCredential", a new object per resource, as an SDK client would make),
// and prints one JSON line: {"version", "tokens": {R: {token, expiresOnTimestamp, refreshAfterTimestamp,
// before, after}}} with before/after the wall clock (ms) around each getToken; or {"error": message} and exit 1.
import { DefaultAzureCredential, ManagedIdentityCredential } from "@azure/identity";
import { readFileSync } from "node:fs";

const credentials = { DefaultAzureCredential, ManagedIdentityCredential };
const [name, ...resources] = process.argv.slice(2);
const version = JSON.parse(
    readFileSync(new URL("./node_modules/@azure/identity/package.json", import.meta.url), "utf8")).version;

try {
    const tokens = {};
    for (const resource of resources) {
        const credential = new credentials[name]();
        const before = Date.now();
        const token = await credential.getToken(`${resource}/.default`);
        const after = Date.now();
        tokens[resource] = { token: token.token, expiresOnTimestamp: token.expiresOnTimestamp,
                             refreshAfterTimestamp: token.refreshAfterTimestamp ?? null, before, after };
    }
    console.log(JSON.stringify({ version, tokens }));
} catch (error) {
    console.log(JSON.stringify({ error: String(error?.message ?? error) }));
    process.exitCode = 1;
}

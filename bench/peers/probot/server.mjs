// The Probot peer of portcullis's load driver (BENCHMARKS.md): a Probot 14
// GitHub App doing the work a team would otherwise write for a deployment
// protection rule, in one of two modes (environment variable PEER_MODE):
//
// - `ingest` (the default; the driver's side-by-side rounds): per
//   `deployment_protection_rule.requested` delivery it verifies the signature
//   (Probot's webhooks middleware), parses the payload, checks the sender
//   against a list of approvers and records the pending request in an
//   in-memory Map keyed by workflow run, then answers, with no API call.
//   That is what portcullis does at intake (it stores the request as pending
//   and answers 202, deciding later), minus durability: portcullis also
//   writes an audit record of every delivery, this peer keeps nothing past
//   its process. The throughput ratio compares like with like.
// - `review`: the whole job per delivery, as a Probot app would do it: the
//   same check, then the review posted to the GitHub API (the driver's local
//   mock) as the installation, before the webhook is answered (that is how
//   `@octokit/webhooks` works: the response waits for the handler). The
//   driver runs it once at saturation, next to portcullis's "full work at
//   saturation" phase (decision, durable audit, review call per delivery).
//
// Usage: node server.mjs <port> (0 for any); prints `READY <port>`.
// Environment: APP_ID, PRIVATE_KEY_PATH, WEBHOOK_SECRET, GITHUB_API_URL,
// PEER_MODE (ingest | review), APPROVERS (comma-separated, default
// "octocat,hubot").
//
// Fairness choices, each in Probot's favour:
// - no request logging: a plain `node:http` server around
//   `createNodeMiddleware` (Probot's own server adds pino-http, which halves
//   throughput), and `logLevel: "fatal"`;
// - Octokit's throttling plugin off: by default it spaces write requests of
//   one installation 1 s apart (GitHub's secondary rate limit guidance),
//   which would cap `review` mode at one review a second;
// - `ingest` keeps its pending requests in memory only (no durable record).
import { readFileSync } from "node:fs";
import { createServer } from "node:http";

import { Probot, ProbotOctokit, createNodeMiddleware } from "probot";

const port = Number(process.argv[2] ?? 0);
const mode = process.env.PEER_MODE ?? "ingest";
if (mode !== "ingest" && mode !== "review") {
  console.error(`PEER_MODE must be "ingest" or "review", not "${mode}"`);
  process.exit(2);
}
const approvers = new Set((process.env.APPROVERS ?? "octocat,hubot").split(",").map((s) => s.trim().toLowerCase()));
const runPath = /\/repos\/([^/]+)\/([^/]+)\/actions\/runs\/(\d+)\/deployment_protection_rule$/;

// ingest: the pending requests, by "owner/repo/run", as portcullis's store
// holds them until a decision.
const pending = new Map();

const app = (probot) => {
  probot.on("deployment_protection_rule.requested", async (context) => {
    const p = context.payload;
    const match = runPath.exec(new URL(p.deployment_callback_url).pathname);
    if (!match || !p.environment) {
      throw new Error("the delivery names no workflow run or environment");
    }
    const [, owner, repo, runId] = match;
    const sender = p.sender?.login ?? "";
    const approved = approvers.has(sender.toLowerCase());
    if (mode === "ingest") {
      pending.set(`${owner}/${repo}/${runId}`, {
        delivery: context.id,
        installation: p.installation?.id,
        environment: p.environment,
        sha: p.deployment?.sha,
        sender,
        approved,
        received_at: Date.now(),
      });
      return;
    }
    await context.octokit.request("POST /repos/{owner}/{repo}/actions/runs/{run_id}/deployment_protection_rule", {
      owner,
      repo,
      run_id: Number(runId),
      environment_name: p.environment,
      state: approved ? "approved" : "rejected",
      comment: approved
        ? `${sender} may deploy ${p.deployment?.sha ?? ""} to ${p.environment}.`
        : `${sender} is not an approver of ${p.environment}.`,
    });
  });
};

const probot = new Probot({
  appId: process.env.APP_ID,
  privateKey: readFileSync(process.env.PRIVATE_KEY_PATH, "utf8"),
  secret: process.env.WEBHOOK_SECRET,
  baseUrl: process.env.GITHUB_API_URL,
  logLevel: "fatal",
  // A function, so the setting survives Probot's own option merging.
  Octokit: ProbotOctokit.defaults((options) => ({ ...options, throttle: { ...options.throttle, enabled: false } })),
});

const middleware = await createNodeMiddleware(app, { probot, webhooksPath: "/webhooks/github" });
const server = createServer((req, res) => {
  middleware(req, res, () => {
    // GET /pending: how many requests `ingest` holds (the driver's check
    // that the work was done).
    if (req.method === "GET" && req.url === "/pending") {
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ mode, pending: pending.size }));
      return;
    }
    res.writeHead(404).end();
  });
});
server.keepAliveTimeout = 60_000;
server.listen(port, "127.0.0.1", () => {
  console.log(`READY ${server.address().port} (${mode})`);
});

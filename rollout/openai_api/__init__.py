"""labrl's OpenAI-compatible rollout endpoint: agent programs written against the `openai` client
talk to the policy being trained, and every completion is recorded token for token.

- `types`: what one request asks for and what it gets back (shared by the session and the server);
- `session`: one episode's completions: prompt ids (re-using the ids already sampled), the call to
  the generation router, tool-call parsing, and the record the trajectory is assembled from;
- `protocol`: the OpenAI wire format (request validation, responses, stream chunks);
- `server`: the aiohttp endpoint an env worker serves, one private URL per episode.
"""

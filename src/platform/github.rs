//! GitHub App client: App JWT, installation tokens, the review call.

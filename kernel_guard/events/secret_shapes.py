"""The catalogue of provider token shapes: a prefix, a length and an alphabet each.

The shapes are public facts, documented by the providers and collected by the
maintained scanners (gitleaks' default rules, GitHub secret scanning's
provider patterns); this table is kernel_guard's own.  Each row is
``(name, keywords, pattern)``:

* ``keywords``: literal strings, matched case-insensitively, at least one of
  which every match of ``pattern`` contains.  They are the gate
  (:mod:`.secrets`): a text holding none of the catalogue's keywords runs no
  pattern at all.
* ``pattern``: the token itself, redacted whole (a named group ``s``, where
  there is one, is the only part redacted).

Every shape's match holds a run of 16 or more characters of ``[A-Za-z0-9_+=.~:$-]``
holding its keyword, unless one of the gate's anchors (:data:`.secrets._ANCHORS`) names it:
the gate looks for these keywords only in such runs (``tests/events`` checks it).

Shapes that only context can tell from random text (a bare 40-character hex
key, a UUID, a Cloudflare token) are not here: the context rules of
:mod:`.secrets` catch them after a secret-looking name or option.
"""

from __future__ import annotations

__all__ = ["SHAPES"]

#: no letter or digit just before the token
_B = r"(?<![A-Za-z0-9])"
#: no letter or digit just after it
_E = r"(?![A-Za-z0-9])"

SHAPES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    # -- source forges ---------------------------------------------------------------
    ("github token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), _B + r"gh[pousr]_[A-Za-z0-9]{30,255}"),
    ("github fine-grained token", ("github_pat_",), _B + r"github_pat_[A-Za-z0-9_]{40,255}"),
    ("gitlab token", ("glpat-", "gldt-", "glrt-", "glrtr-", "glptt-", "glft-", "glimt-", "glagent-", "gloas-",
                      "glcbt-", "glsoat-", "glffct-", "glwt-"),
     _B + r"gl(?:pat|dt|rtr?|ptt|ft|imt|agent|oas|cbt|soat|ffct|wt)-[A-Za-z0-9_.-]{20,}"),
    ("gitlab runner registration token", ("gr1348941",), _B + r"GR1348941[A-Za-z0-9_-]{20,}"),
    ("bitbucket app password", ("atbb",), _B + r"ATBB[A-Za-z0-9_=.-]{28,}"),
    ("gitea / forgejo token", ("gitea_token", "forgejo_token"), r"(?i)(?:gitea|forgejo)_token\W{1,4}(?P<s>[a-f0-9]{40})"),
    # -- cloud providers ---------------------------------------------------------------
    ("aws access key id", ("akia", "asia", "abia", "acca", "a3t"),
     _B + r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}" + _E),
    ("aws secret after its name", ("aws_secret_access_key", "secretaccesskey", "secret_access_key"),
     r"(?i)(?:aws_)?secret_?access_?key[\"']?\s*(?:[=:,]|\s)\s*[\"']?(?P<s>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"),
    ("aws bedrock api key", ("absk",), _B + r"ABSK[A-Za-z0-9+/]{100,}={0,2}"),
    ("google api key", ("aiza",), _B + r"AIza[0-9A-Za-z_-]{35}"),
    ("google oauth client secret", ("gocspx-",), _B + r"GOCSPX-[A-Za-z0-9_-]{28}"),
    ("google oauth access token", ("ya29.",), _B + r"ya29\.[0-9A-Za-z_-]{20,}"),
    ("google oauth refresh token", ("1//0",), r"(?<![0-9])1//0[0-9A-Za-z_-]{40,}"),
    ("azure storage account key", ("accountkey=",), r"(?i)AccountKey=(?P<s>[A-Za-z0-9+/]{40,}={0,2})"),
    ("azure shared access key", ("sharedaccesskey=",), r"(?i)SharedAccessKey=(?P<s>[A-Za-z0-9+/]{20,}={0,2})"),
    ("azure sas signature", ("sig=",), r"(?i)[?&;]sig=(?P<s>[A-Za-z0-9%+/=]{20,})"),
    ("azure ad client secret", ("q~",), _B + r"[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.-]{31,34}"),
    ("azure devops pat", ("azdo",), _B + r"[A-Za-z0-9]{52}JQQJ9(?:9|D|H)[A-Za-z0-9][A-L][A-Za-z0-9]{16}AZDO[A-Za-z0-9]{4}"),
    ("azure function / apim key with az", ("azfu", "azse"), _B + r"[A-Za-z0-9_-]{44}AzFu[A-Za-z0-9_-]{5}[AD]|[A-Za-z0-9]{76}AzSe[A-D][A-Za-z0-9]{5}"),
    ("alibaba access key id", ("ltai",), _B + r"LTAI[A-Za-z0-9]{20}" + _E),
    ("tencent secret id", ("akid",), _B + r"AKID[A-Za-z0-9]{32}" + _E),
    ("yandex key", ("aqvn", "ycaj", "ycm", "t1."), _B + r"(?:AQVN[A-Za-z0-9_-]{35,38}|YC[A-Za-z0-9_-]{38}|t1\.[A-Z0-9a-z_-]+[=]{0,2}\.[A-Z0-9a-z_-]{86}[=]{0,2})"),
    ("ibm cloud / generic iam key", ("ibm_api_key", "ibmcloud_api_key"), r"(?i)ibm(?:cloud)?_api_key\W{1,4}(?P<s>[A-Za-z0-9_-]{44})"),
    ("digitalocean token", ("dop_v1_", "doo_v1_", "dor_v1_"), _B + r"do[por]_v1_[a-f0-9]{64}"),
    ("heroku token", ("hrku-",), _B + r"HRKU-[A-Za-z0-9_-]{20,}"),
    ("fly.io token", ("fo1_", "fm1", "fm2_"), _B + r"(?:fo1_[A-Za-z0-9_-]{43}|fm[12][ar]?_[A-Za-z0-9+/]{100,}={0,3})"),
    ("netlify token", ("nfp_", "nfc_", "nfo_"), _B + r"nf[pco]_[A-Za-z0-9]{36}"),
    ("render api key", ("rnd_",), _B + r"rnd_[A-Za-z0-9]{32}"),
    ("neon api key", ("napi_",), _B + r"napi_[a-z0-9]{64}"),
    ("supabase key", ("sbp_", "sb_secret_"), _B + r"(?:sbp_[a-f0-9]{40}|sb_secret_[A-Za-z0-9_-]{20,})"),
    ("planetscale token", ("pscale_",), _B + r"pscale_(?:tkn|pw|oauth)_[A-Za-z0-9=._-]{32,64}"),
    ("scalingo token", ("tk-us-",), _B + r"tk-us-[A-Za-z0-9_-]{48}"),
    ("openshift token", ("sha256~",), _B + r"sha256~[A-Za-z0-9_-]{43}"),
    ("tailscale key", ("tskey-",), _B + r"tskey-(?:api|auth|client|scim|webhook)-[A-Za-z0-9]{6,}-[A-Za-z0-9]{16,}"),
    ("hashicorp vault token", ("hvs.", "hvb.", "hvr."), _B + r"hv[sbr]\.[A-Za-z0-9_-]{24,}"),
    ("terraform cloud token", (".atlasv1.",), _B + r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70}"),
    ("pulumi token", ("pul-",), _B + r"pul-[a-f0-9]{40}"),
    ("doppler token", ("dp.pt.", "dp.st.", "dp.sa.", "dp.ct.", "dp.scim.", "dp.audit."),
     _B + r"dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9._-]{40,}"),
    ("1password token", ("ops_eyj", "a3-"), _B + r"(?:ops_eyJ[A-Za-z0-9+/_-]{250,}={0,3}|A3-[A-Z0-9]{6}-(?:[A-Z0-9]{11}|[A-Z0-9]{6}-[A-Z0-9]{5})-[A-Z0-9]{5}-[A-Z0-9]{5}-[A-Z0-9]{5})"),
    ("age secret key", ("age-secret-key-1",), r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}"),
    ("docker hub token", ("dckr_pat_", "dckr_oat_"), _B + r"dckr_(?:pat|oat)_[A-Za-z0-9_-]{20,}"),
    ("artifactory key", ("akcp", "cmvmdgtu"), _B + r"(?:AKCp[A-Za-z0-9]{69}|cmVmdGtu[A-Za-z0-9]{56})"),
    ("databricks token", ("dapi", "dose"), _B + r"(?:dapi|dose)[a-f0-9]{32}(?:-\d)?" + _E),
    ("dynatrace token", ("dt0c01.",), _B + r"dt0c01\.[A-Z0-9]{24}\.[A-Z0-9]{64}"),
    ("new relic key", ("nrak-", "nrii-", "nrjs-", "nraa-", "nrra-"), _B + r"NR(?:AK|II|JS|AA|RA)-[A-Za-z0-9]{19,}"),
    ("grafana token", ("glc_", "glsa_"), _B + r"(?:glc_[A-Za-z0-9+/]{32,400}={0,2}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})"),
    ("grafana legacy api key", ("eyjrijoi",), _B + r"eyJrIjoi[A-Za-z0-9]{60,400}={0,2}"),
    ("sentry token", ("sntrys_", "sntryu_"), _B + r"(?:sntrys_eyJ[A-Za-z0-9+/=_-]{60,}|sntryu_[a-f0-9]{64})"),
    ("sonarqube token", ("squ_", "sqp_", "sqa_"), _B + r"sq[upa]_[a-f0-9]{40}"),
    ("buildkite token", ("bkua_",), _B + r"bkua_[a-f0-9]{40}"),
    ("circleci token", ("ccipat_",), _B + r"CCIPAT_[A-Za-z0-9]{22}_[a-f0-9]{40}"),
    ("prefect token", ("pnu_",), _B + r"pnu_[A-Za-z0-9]{36}"),
    ("octopus deploy key", ("api-",), _B + r"API-[A-Z0-9]{26}" + _E),
    ("harness token", ("pat.", "sat."), _B + r"(?:pat|sat)\.[A-Za-z0-9_-]{22}\.[a-f0-9]{24}\.[A-Za-z0-9]{20}"),
    ("infracost key", ("ico-",), _B + r"ico-[A-Za-z0-9]{32}"),
    # -- package registries --------------------------------------------------------------
    ("npm token", ("npm_",), _B + r"npm_[A-Za-z0-9]{36}"),
    ("pypi token", ("pypi-ageichlwas5vcmc", "pypi-agendgvzdc5wexbplm9yzw"),
     _B + r"pypi-AgE(?:IcHlwaS5vcmc|NdGVzdC5weXBpLm9yZw)[A-Za-z0-9_-]{50,}"),
    ("rubygems key", ("rubygems_",), _B + r"rubygems_[a-f0-9]{48}"),
    ("nuget key", ("oy2",), _B + r"oy2[a-z0-9]{43}" + _E),
    ("clojars token", ("clojars_",), _B + r"CLOJARS_[a-z0-9]{60}"),
    ("private packagist token", ("packagist_",), _B + r"packagist_[ou][ru]t_[a-f0-9]{68}"),
    ("readme key", ("rdme_",), _B + r"rdme_[a-z0-9]{70}"),
    # -- AI and data services -----------------------------------------------------------
    ("anthropic key", ("sk-ant-",), _B + r"sk-ant-(?:api|admin|sid)\d\d-[A-Za-z0-9_-]{20,}"),
    ("openai key", ("t3blbkfj",), _B + r"sk-[A-Za-z0-9_-]{10,}T3BlbkFJ[A-Za-z0-9_-]{10,}"),
    ("sk- api key", ("sk-",), _B + r"sk-(?:proj-|svcacct-|admin-|or-v1-|ant-)?[A-Za-z0-9_-]{20,}"),
    ("hugging face token", ("hf_", "api_org_"), _B + r"(?:hf_[A-Za-z0-9]{30,}|api_org_[A-Za-z0-9]{30,})"),
    ("groq key", ("gsk_",), _B + r"gsk_[A-Za-z0-9]{48,}"),
    ("replicate token", ("r8_",), _B + r"r8_[A-Za-z0-9]{37}"),
    ("perplexity key", ("pplx-",), _B + r"pplx-[A-Za-z0-9]{48}"),
    ("xai key", ("xai-",), _B + r"xai-[A-Za-z0-9]{70,}"),
    ("langsmith key", ("lsv2_",), _B + r"lsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10}"),
    ("pinecone key", ("pcsk_",), _B + r"pcsk_[A-Za-z0-9_]{40,}"),
    ("tavily key", ("tvly-",), _B + r"tvly-(?:dev-)?[A-Za-z0-9]{32}"),
    ("together key", ("tgp_v1_",), _B + r"tgp_v1_[A-Za-z0-9_-]{40,}"),
    ("cohere / mistral / kaggle / wandb key after its name",
     ("cohere", "mistral", "kaggle_key", "wandb_api_key", "co_api_key"),
     r"(?i)(?:cohere\w*|mistral\w*|kaggle_key|wandb_api_key|co_api_key)[\"']?[=:][\"']?(?P<s>[A-Za-z0-9]{32,40})"),
    ("posthog personal key", ("phx_",), _B + r"phx_[A-Za-z0-9_]{43}"),
    ("segment token", ("sgp_",), _B + r"sgp_[A-Za-z0-9_]{40,64}"),
    ("airtable token", ("pat",), _B + r"pat[A-Za-z0-9]{14}\.[a-f0-9]{64}"),
    ("notion token", ("secret_", "ntn_"), _B + r"(?:secret_[A-Za-z0-9]{43}|ntn_[0-9]{11}[A-Za-z0-9]{35})" + _E),
    ("linear key", ("lin_api_", "lin_oauth_"), _B + r"lin_(?:api|oauth)_[A-Za-z0-9]{40}"),
    ("figma token", ("figd_",), _B + r"figd_[A-Za-z0-9_-]{40}"),
    ("typeform token", ("tfp_",), _B + r"tfp_[A-Za-z0-9_.=-]{59}"),
    ("contentful token", ("cfpat-",), _B + r"CFPAT-[A-Za-z0-9_-]{43}"),
    ("frame.io token", ("fio-u-",), _B + r"fio-u-[A-Za-z0-9_=-]{64}"),
    ("mapbox secret token", ("sk.eyj",), _B + r"sk\.eyJ[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}"),
    ("maxmind key", ("_mmk",), _B + r"[A-Za-z0-9]{6}_[A-Za-z0-9]{29}_mmk"),
    # -- messaging and e-mail -------------------------------------------------------------
    ("slack token", ("xox",), _B + r"xox[abposrce]-(?:\d-)?[A-Za-z0-9-]{20,}"),
    ("slack config token", ("xoxe.",), _B + r"xoxe\.xox[bp]-\d-[A-Za-z0-9]{100,}"),
    ("slack app token", ("xapp-",), _B + r"xapp-\d-[A-Z0-9]{8,}-\d{8,}-[a-z0-9]{32,}"),
    ("slack webhook", ("hooks.slack",), r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]+"),
    ("discord webhook", ("discord",), r"https://(?:\w+\.)?discord(?:app)?\.com/api/webhooks/\d+/(?P<s>[A-Za-z0-9_-]{20,})"),
    ("microsoft teams webhook", ("webhook.office.com", "outlook.office.com/webhook"),
     r"https://[a-z0-9.-]*(?:webhook\.office\.com/webhookb2|outlook\.office\.com/webhook)/[A-Za-z0-9@/_-]+"),
    ("telegram bot token", (":aa",), r"(?<![0-9])\d{8,10}:AA[A-Za-z0-9_-]{33}"),
    ("sendgrid key", ("sg.",), _B + r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"),
    ("twilio api key", ("sk",), _B + r"SK[0-9a-fA-F]{32}" + _E),
    # a Twilio auth token is 32 hex digits with no prefix: only where Twilio is named
    ("twilio auth token near its name", ("twilio",), _B + r"[a-f0-9]{32}" + _E),
    ("mailgun key", ("key-", "pubkey-"), _B + r"(?:pub)?key-[0-9a-zA-Z]{32}" + _E),
    ("mailchimp key", ("-us",), _B + r"[0-9a-f]{32}-us\d{1,2}" + _E),
    ("mailjet / brevo key", ("xkeysib-", "xsmtpsib-"), _B + r"x(?:key|smtp)sib-[a-f0-9]{64}-[A-Za-z0-9]{16}"),
    ("postmark / resend key", ("re_",), _B + r"re_[A-Za-z0-9]{8}_[A-Za-z0-9]{24}"),
    ("intercom / zendesk / pagerduty key after its name", ("intercom", "zendesk", "pagerduty"),
     r"(?i)(?:intercom|zendesk|pagerduty)\w*[\"']?[=:][\"']?(?P<s>[A-Za-z0-9+_=-]{20,})"),
    ("postman key", ("pmak-",), _B + r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}"),
    ("atlassian token", ("atatt3", "atctt3"), _B + r"AT[AC]TT3[A-Za-z0-9_=-]{150,}"),
    # -- payments and commerce ------------------------------------------------------------
    ("stripe key", ("_live_", "_test_"), _B + r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    ("stripe webhook secret", ("whsec_",), _B + r"whsec_[A-Za-z0-9+/]{32,}"),
    ("shopify token", ("shpat_", "shpca_", "shppa_", "shpss_"), _B + r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"),
    ("square token", ("eaaa", "sq0atp-", "sq0csp-"), _B + r"(?:EAAA[A-Za-z0-9_-]{60}|sq0atp-[0-9A-Za-z_-]{22}|sq0csp-[0-9A-Za-z_-]{43})"),
    ("braintree / paypal token", ("access_token$",), r"access_token\$(?:production|sandbox)\$[a-z0-9]{16}\$[a-f0-9]{32}"),
    ("flutterwave key", ("flwseck", "flwpubk"), _B + r"FLW(?:SECK|PUBK)(?:_TEST)?-[a-h0-9]{32}-X"),
    ("duffel token", ("duffel_",), _B + r"duffel_(?:test|live)_[A-Za-z0-9_=-]{43}"),
    ("easypost key", ("ezak", "eztk"), _B + r"EZ[AT]K[A-Za-z0-9]{54}"),
    ("shippo token", ("shippo_",), _B + r"shippo_(?:live|test)_[a-f0-9]{40}"),
    ("coinbase / kraken key after its name", ("coinbase", "kraken"),
     r"(?i)(?:coinbase|kraken)\w*[\"']?[=:][\"']?(?P<s>[A-Za-z0-9+/=_-]{32,})"),
    ("facebook access token", ("eaac", "eaam"), _B + r"EAA[MC][A-Za-z0-9]{100,}"),
    ("dropbox token", ("sl.",), _B + r"sl\.[A-Za-z0-9_-]{130,}"),
    # -- keys and signed tokens -----------------------------------------------------------
    ("private key", ("private key",),
     r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
     r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[\s\S]*)"),
    ("putty private key", ("putty-user-key-file",), r"PuTTY-User-Key-File-\d: [\s\S]*"),
    ("jwt", ("eyj",), _B + r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    ("base64 json credential", ("eyj",), _B + r"eyJ[A-Za-z0-9+/_-]{60,}={0,2}"),
)

"""The deployment (azure.yaml, infra/*.bicep, CI, devcontainer) checked as far as it can be here.

No Bicep compiler can be installed on these machines and no subscription is reachable, so the templates are
parsed with pycep-parser and their parts asserted: resources and properties, role assignments, module
parameters and outputs, and the app settings against what the code reads (found by scanning the code, so a
moved module keeps being checked). `make test` also scans infra/ with checkov.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pycep import BicepParser

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
NOT_DEPLOYED = {"tests", "bench", "infra", ".venv", ".venv-deploy", ".checkov-venv", "node_modules", "data", ".git"}

# Built-in role definitions the templates assign, as Microsoft's built-in roles reference lists them.
BUILT_IN_ROLES = {
    "StorageBlobDataOwner": ("Storage Blob Data Owner", "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"),
    "StorageBlobDataReader": ("Storage Blob Data Reader", "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"),
    "StorageBlobDataContributor": ("Storage Blob Data Contributor", "ba92f5b4-2d11-453d-a403-e96b0029c9fe"),
    "StorageQueueDataContributor": ("Storage Queue Data Contributor", "974c5e8b-45b9-4653-ba55-5f855dd0fb88"),
    "StorageTableDataContributor": ("Storage Table Data Contributor", "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"),
    "EventHubsDataReceiver": ("Azure Event Hubs Data Receiver", "a638d3c7-ab3a-418d-83e6-5f17a39d4fde"),
    "EventHubsDataSender": ("Azure Event Hubs Data Sender", "2b629674-e913-4c01-ae53-ef4638d8f975"),
    "KeyVaultSecretsUser": ("Key Vault Secrets User", "4633458b-17de-408a-b874-0445c86b69e6"),
    "KeyVaultSecretsOfficer": ("Key Vault Secrets Officer", "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"),
    "MonitoringMetricsPublisher": ("Monitoring Metrics Publisher", "3913510d-42f4-4e42-8a64-420c390055eb"),
    "AzureMLDataScientist": ("AzureML Data Scientist", "f6c7c914-8db3-469d-8ca1-694a8f32e121"),
    "IoTHubDataContributor": ("IoT Hub Data Contributor", "4fc6c259-987e-4a07-842e-c321cc9d413f"),
}

# Settings the template sets that no module of ours reads: the Functions host and azure-identity read them.
READ_BY_THE_PLATFORM = {
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "Functions host (and azure-monitor-opentelemetry)",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Functions host: Entra ID ingestion as the app identity",
    "AZURE_CLIENT_ID": "azure-identity's DefaultAzureCredential: which managed identity to use",
}


# --- reading the templates ----------------------------------------------------------------------------


@functools.cache
def template(relative: str) -> dict:
    return BicepParser().parse(file_path=INFRA / relative)


def declared_names(tree: dict) -> set[str]:
    return {*tree["parameters"], *tree["variables"], *tree["resources"], *tree["modules"]}


def resource(relative: str, symbol: str) -> dict:
    """A resource's body, unwrapped from its loop and condition."""
    config = template(relative)["resources"][symbol]["config"]
    while "config" in config and ("condition" in config or "loop_type" in config):
        config = config["config"]
    return config


def resources_of_type(relative: str, kind: str) -> dict[str, dict]:
    return {symbol: resource(relative, symbol) for symbol, body in template(relative)["resources"].items()
            if body["type"] == kind}  # fmt: skip


def module_body(name: str) -> dict:
    config = template("main.bicep")["modules"][name]["config"]
    return config["config"] if "condition" in config else config


def accessed(expression: Any) -> str:
    """`a.b.c` of a property accessor, or the plain name."""
    if isinstance(expression, str):
        return expression
    operands = expression["operator"]["operands"]
    return f"{accessed(operands['operand_1'])}.{accessed(operands['operand_2'])}"


def settings_of(expression: Any, tree: dict) -> dict[str, Any]:
    """Every key an app-settings expression can produce (both sides of a condition), with its value."""
    if isinstance(expression, str):
        return settings_of(tree["variables"][expression]["value"], tree) if expression in tree["variables"] else {}
    if "function" in expression and expression["function"]["type"] == "union":
        merged: dict[str, Any] = {}
        for argument in expression["function"]["parameters"].values():
            merged |= settings_of(argument, tree)
        return merged
    if "operator" in expression and expression["operator"]["type"] == "conditional":
        operands = expression["operator"]["operands"]
        return settings_of(operands["true_value"], tree) | settings_of(operands["false_value"], tree)
    return dict(expression)


@functools.cache
def app_settings() -> dict[str, Any]:
    tree = template("main.bicep")
    return settings_of(module_body("functionApp")["params"]["appSettings"], tree)


def literal(value: Any) -> str | None:
    """The value when it is a string literal of main.bicep (not a name it declares, not an interpolation)."""
    tree = template("main.bicep")
    if isinstance(value, str) and value not in declared_names(tree) and "${" not in value:
        return value
    return None


def role_assignments(relative: str) -> list[tuple[str, str]]:
    """(role name in roles.json, principal expression) of each role assignment in a module."""
    tree = template(relative)
    found = []
    for symbol, body in resources_of_type(relative, "Microsoft.Authorization/roleAssignments").items():
        role = body["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        loop = tree["resources"][symbol]["config"].get("loop_type")
        if loop and loop["detail"]["array_name"] in tree["variables"]:  # for role in <roles>: each of them
            array = tree["variables"][loop["detail"]["array_name"]]["value"]
            found += [(accessed(item).removeprefix("roles."), body["properties"]["principalId"]) for item in array]
        else:
            found.append((accessed(role).removeprefix("roles."), body["properties"]["principalId"]))
    return found


# --- reading the code ---------------------------------------------------------------------------------


def deployed_modules() -> list[Path]:
    return [path for path in sorted(ROOT.rglob("*.py")) if not NOT_DEPLOYED & set(path.relative_to(ROOT).parts)]


_SETTING_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")


def settings_the_code_reads() -> set[str]:
    """Upper-snake string constants in every module that reads the environment, plus the host's view of
    function_app.py: each binding's connection and every %SETTING% it names."""
    names = set()
    for path in deployed_modules():
        source = path.read_text()
        if not re.search(r"\benviron\b|getenv|\benv\.get\(", source):
            continue
        names |= {node.value for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and _SETTING_NAME.fullmatch(node.value)}  # fmt: skip
    return names | binding_settings()["referenced"]


@functools.cache
def function_bindings() -> dict[str, list[dict]]:
    """Each function's bindings as the host indexes them."""
    import function_app
    from shared.devtools.functions_host import indexed_functions

    return {function.get_function_name(): json.loads(function.get_function_json())["bindings"]
            for function in indexed_functions(function_app.app)}  # fmt: skip


@functools.cache
def binding_settings() -> dict[str, set[str]]:
    connections, referenced, queues, event_hubs = set(), set(), set(), set()
    for bindings in function_bindings().values():
        for binding in bindings:
            if "connection" in binding:
                connections.add(binding["connection"])
            referenced |= {name for value in binding.values() if isinstance(value, str)
                           for name in re.findall(r"%([^%]+)%", value)}  # fmt: skip
            if binding["type"].startswith("queue"):
                queues.add(binding["queueName"])
            if binding["type"] == "eventHubTrigger":
                event_hubs.add(binding["eventHubName"])
    return {"connections": connections, "referenced": referenced, "queues": queues, "event_hubs": event_hubs}


def storage_literals(path: Path) -> dict[str, set[str]]:
    """Containers, tables and queues one module names as literals: module constants (*_CONTAINER, *TABLE,
    *_QUEUE) and the defaults of parameters called container/table/queue."""
    found: dict[str, set[str]] = {"CONTAINER": set(), "TABLE": set(), "QUEUE": set()}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                kind = next((k for k in found if isinstance(target, ast.Name) and target.id.endswith(k)), None)
                if kind and isinstance(node.value.value, str):
                    found[kind].add(node.value.value)
        if isinstance(node, ast.arguments):
            positional = node.posonlyargs + node.args
            pairs = [*zip(positional[len(positional) - len(node.defaults):], node.defaults, strict=True),
                     *zip(node.kwonlyargs, node.kw_defaults, strict=True)]  # fmt: skip
            for argument, default in pairs:
                if isinstance(default, ast.Constant) and argument.arg.upper() in found:
                    found[argument.arg.upper()].add(default.value)
    return found


def storage_names_in_code() -> dict[str, set[str]]:
    """Containers, tables and queues the code names (storage_literals of every deployed module), plus the
    component catalogue's container."""
    from shared.config.settings import Settings

    found: dict[str, set[str]] = {"CONTAINER": set(), "TABLE": set(), "QUEUE": set()}
    for path in deployed_modules():
        for kind, names in storage_literals(path).items():
            found[kind] |= names
    found["CONTAINER"].add(Settings().component_catalog_blob.split("/", 1)[0])
    return found


def documented_manual_settings() -> set[str]:
    """The settings README's "Deploying to Azure" lists as not set by the template."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Deploying to Azure") :]
    section = section[section.index("App settings the template does not set") :]
    table = section[: section.index("\n\n", section.index("| --- |"))]
    return {name for row in table.splitlines()[2:] for name in re.findall(r"`([A-Za-z0-9_]+)`", row.split("|")[1])}


# --- the templates: every file parses, modules are called as declared ---------------------------------


def test_every_template_parses_and_names_its_target_scope() -> None:
    files = sorted(path.relative_to(INFRA).as_posix() for path in INFRA.rglob("*.bicep"))
    modules = ("alerts", "azureml", "eventhubs", "functionapp", "identity", "iothub", "keyvault", "monitoring",
               "storage")  # fmt: skip
    assert files == ["main.bicep", *(f"modules/{name}.bicep" for name in modules)]
    for relative in files:
        assert template(relative)["resources"] or template(relative)["modules"]
    assert template("main.bicep")["globals"]["scope"]["value"] == "subscription"


def test_modules_get_every_required_parameter_and_nothing_else() -> None:
    """What the Bicep compiler would refuse first: a missing or misspelt module parameter."""
    for name, declaration in template("main.bicep")["modules"].items():
        module = template(declaration["detail"]["path"])
        passed = set(module_body(name)["params"])
        declared = module["parameters"]
        required = {param for param, spec in declared.items() if "default" not in spec}
        assert passed <= set(declared), f"{name}: unknown parameters {passed - set(declared)}"
        assert required <= passed, f"{name}: missing parameters {required - passed}"


def test_module_outputs_used_in_main_exist() -> None:
    text = (INFRA / "main.bicep").read_text()
    modules = template("main.bicep")["modules"]
    for name, output in re.findall(r"\b(\w+)\.outputs\.(\w+)", text):
        assert output in template(modules[name]["detail"]["path"])["outputs"], f"{name}.outputs.{output}"


def test_json_files_the_templates_load_exist_and_roles_are_the_built_in_ones() -> None:
    for path in INFRA.rglob("*.bicep"):
        for loaded in re.findall(r"loadJsonContent\('([^']+)'\)", path.read_text()):
            assert (path.parent / loaded).is_file(), f"{path.name} loads {loaded}"
    roles = json.loads((INFRA / "roles.json").read_text())
    assert roles == {key: guid for key, (_, guid) in BUILT_IN_ROLES.items()}


# --- resources and properties -------------------------------------------------------------------------


def test_function_app_runs_python_3_11_on_flex_consumption_as_the_user_assigned_identity() -> None:
    (plan,) = resources_of_type("modules/functionapp.bicep", "Microsoft.Web/serverfarms").values()
    (site,) = resources_of_type("modules/functionapp.bicep", "Microsoft.Web/sites").values()
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"} and plan["properties"]["reserved"] is True
    assert site["kind"] == "functionapp,linux"
    assert site["identity"]["type"] == "UserAssigned"
    properties = site["properties"]
    assert properties["httpsOnly"] is True and properties["keyVaultReferenceIdentity"] == "identityId"
    config = properties["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert config["scaleAndConcurrency"] == {
        "instanceMemoryMB": "instanceMemoryMB",
        "maximumInstanceCount": "maximumInstanceCount",
    }
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"}
    parameters = template("main.bicep")["parameters"]
    assert {"instanceMemoryMB", "maximumInstanceCount", "eventHubPartitionCount"} <= set(parameters)
    assert {d["type"]: d["argument"] for d in parameters["instanceMemoryMB"]["decorators"]}["allowed"] == [
        512,
        2048,
        4096,
    ]
    assert module_body("functionApp")["params"]["deploymentContainer"] == "deploymentContainer"


def test_flex_consumption_settings_it_rejects_are_not_set() -> None:
    """Flex Consumption takes the runtime from functionAppConfig and deploys from blob storage: the settings
    of the older plans (worker runtime, content share, run-from-package) are not allowed."""
    retired = {
        "FUNCTIONS_WORKER_RUNTIME",
        "FUNCTIONS_EXTENSION_VERSION",
        "WEBSITE_RUN_FROM_PACKAGE",
        "WEBSITE_CONTENTSHARE",
        "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
        "SCM_DO_BUILD_DURING_DEPLOYMENT",
    }
    assert retired.isdisjoint(app_settings())


def test_storage_is_keyless_tls_1_2_and_private() -> None:
    account = resource("modules/storage.bicep", "account")["properties"]
    assert account["allowSharedKeyAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2"
    assert account["allowBlobPublicAccess"] is False
    assert resource("modules/storage.bicep", "blobContainers")["properties"]["publicAccess"] == "None"


def test_template_creates_the_containers_queues_and_tables_the_code_names() -> None:
    tree = template("main.bicep")
    variables = {name: body["value"] for name, body in tree["variables"].items()}
    containers = {*variables["appContainers"]}
    queues = {variables["alertQueue"], f"{variables['alertQueue']}-poison"}
    code = storage_names_in_code()
    assert code["CONTAINER"] == containers  # both ways: a name that moves or goes is caught too
    assert code["TABLE"] == {*variables["appTables"]}
    assert code["QUEUE"] | binding_settings()["queues"] == {variables["alertQueue"]}
    assert queues == {"maintenance-alerts", "maintenance-alerts-poison"}
    params = module_body("storage")["params"]
    assert params["tables"] == "appTables" and params["queues"] == ["alertQueue", "${alertQueue}-poison"]
    assert params["containers"]["function"]["parameters"] == {
        "arg_1": "appContainers",
        "arg_2": ["deploymentContainer", "captureContainer"],
    }


def test_storage_names_are_literals_only_in_config_names() -> None:
    """Each container, table and queue name is defined once, in shared/config/names.py; the rest import it."""
    from shared.config import names

    elsewhere = {str(path.relative_to(ROOT)): {kind: found for kind, found in storage_literals(path).items() if found}
                 for path in deployed_modules() if path != ROOT / "shared" / "config" / "names.py"}  # fmt: skip
    assert {path: found for path, found in elsewhere.items() if found} == {}
    variables = {name: body["value"] for name, body in template("main.bicep")["variables"].items()}
    queue = variables["alertQueue"]
    assert (queue, f"{queue}-poison") == (names.ALERT_QUEUE, names.ALERT_POISON_QUEUE)
    assert variables["eventHubName"] == names.TELEMETRY_EVENT_HUB


def test_event_hub_consumer_group_and_optional_capture() -> None:
    variables = {name: body["value"] for name, body in template("main.bicep")["variables"].items()}
    assert {variables["eventHubName"]} == binding_settings()["event_hubs"] == {"car-telemetry"}
    namespace = resource("modules/eventhubs.bicep", "namespace")
    assert namespace["sku"]["name"] == "Standard" and namespace["properties"]["disableLocalAuth"] is True
    hub = resource("modules/eventhubs.bicep", "hub")["properties"]
    assert hub["partitionCount"] == "partitionCount"
    capture = hub["captureDescription"]["operator"]["operands"]
    assert capture["condition"] == "captureEnabled" and capture["false_value"] is None
    destination = capture["true_value"]["destination"]
    assert destination["identity"] == {"type": "UserAssigned", "userAssignedIdentity": "appIdentityId"}
    assert destination["properties"]["blobContainer"] == "captureContainer"
    assert resource("modules/eventhubs.bicep", "consumerGroup")["name"] == "consumerGroupName"
    assert app_settings()["EVENTHUB_CONSUMER_GROUP"] == "consumerGroupName"
    assert "EVENTHUB_CONSUMER_GROUP" in binding_settings()["referenced"]


def test_key_vault_is_rbac_and_the_signing_key_is_a_key_vault_reference() -> None:
    vault = resource("modules/keyvault.bicep", "vault")["properties"]
    assert vault["enableRbacAuthorization"] is True and vault["enableSoftDelete"] is True
    assert resource("modules/keyvault.bicep", "signingKey")["name"] == "head-unit-signing-key"
    signing = app_settings()["HEAD_UNIT_SIGNING_KEY"]
    assert signing == "@Microsoft.KeyVault(SecretUri=${keyVault.outputs.signingKeySecretUri})"
    assert {
        d["type"] for d in template("modules/keyvault.bicep")["parameters"]["headUnitSigningKey"]["decorators"]
    } >= {"secure"}


def test_application_insights_is_wired_to_log_analytics_and_the_app() -> None:
    insights = resource("modules/monitoring.bicep", "appInsights")["properties"]
    assert accessed(insights["WorkspaceResourceId"]) == "workspace.id"
    settings = app_settings()
    assert accessed(settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]) == "monitoring.outputs.connectionString"
    assert (
        settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
        == "ClientId=${identitySettings.clientId};Authorization=AAD"
    )


def test_no_secret_or_key_in_app_settings_or_templates() -> None:
    for name, value in app_settings().items():
        text = json.dumps(value)
        assert "AccountKey" not in text and "SharedAccessKey" not in text, name
        assert not name.endswith("ConnectionString") and name != "EventHubConnection", name
    for path in INFRA.rglob("*.bicep"):
        assert not re.search(r"listKeys|listConnectionStrings|primaryKey", path.read_text()), path.name
    assert accessed(app_settings()["AzureWebJobsStorage__credential"]) == "identitySettings.credential"
    assert template("main.bicep")["variables"]["identitySettings"]["value"]["credential"] == "managedidentity"


def test_azure_ml_module_matches_the_code_and_scales_to_zero() -> None:
    from shared.adapters import azureml

    compute = resource("modules/azureml.bicep", "compute")["properties"]["properties"]
    assert compute["scaleSettings"]["minNodeCount"] == 0
    params = module_body("azureMl")["params"]
    assert (params["computeName"], params["computeSize"]) == (azureml.COMPUTE_NAME, azureml.COMPUTE_SIZE)
    assert params["endpointName"] == azureml.ENDPOINT_NAME
    modes = template("modules/azureml.bicep")["variables"]["restAuthModes"]["value"]
    assert set(modes) == set(azureml.ENDPOINT_AUTH_MODES) and modes["aad_token"] == "AADToken"
    assert template("main.bicep")["parameters"]["scoringAuthMode"]["default"] == "aad_token"
    assert template("main.bicep")["modules"]["azureMl"]["config"]["condition"] == "azureMlEnabled"


def test_the_app_identity_holds_exactly_the_roles_it_needs() -> None:
    app = "appPrincipalId"
    expected = {
        "modules/storage.bicep": {("StorageBlobDataOwner", app), ("StorageQueueDataContributor", app),
                                  ("StorageTableDataContributor", app), ("StorageBlobDataReader", "readerPrincipalId")},
        "modules/eventhubs.bicep": {("EventHubsDataReceiver", app), ("EventHubsDataSender", "senderPrincipalId")},
        "modules/keyvault.bicep": {("KeyVaultSecretsUser", app), ("KeyVaultSecretsOfficer", "officerPrincipalId")},
        "modules/monitoring.bicep": {("MonitoringMetricsPublisher", "principalId")},
        "modules/azureml.bicep": {("AzureMLDataScientist", app)},
        "modules/iothub.bicep": {("IoTHubDataContributor", app)},
    }  # fmt: skip
    for relative, assignments in expected.items():
        assert set(role_assignments(relative)) == assignments, relative
    # Each module's app principal is the user-assigned identity's; the person's roles go to AZURE_PRINCIPAL_ID.
    for name in ("storage", "eventHubs", "keyVault", "azureMl", "iotHub"):
        assert accessed(module_body(name)["params"]["appPrincipalId"]) == "identity.outputs.principalId"
    assert [accessed(p) for p in module_body("monitoring")["params"]["publisherPrincipalIds"]] == [
        "identity.outputs.principalId"
    ]
    assert module_body("eventHubs")["params"]["senderPrincipalId"] == "principalId"


def test_an_existing_iot_hub_when_named_gets_the_apps_data_role_and_its_host_name_in_the_settings() -> None:
    """The template creates no IoT Hub: iotHubName (empty: none) names one, the module is deployed only then,
    scoped to its resource group, and grants on the hub itself; IOTHUB_HOSTNAME is its host name output."""
    main = template("main.bicep")
    assert [main["parameters"][name]["default"] for name in ("iotHubName", "iotHubResourceGroup")] == ["", ""]
    condition = main["modules"]["iotHub"]["config"]["condition"]["operator"]
    assert condition["type"] == "not" and condition["operands"]["bool_value"]["function"]["parameters"] == {
        "item_to_test": "iotHubName"}  # fmt: skip
    scope = module_body("iotHub")["scope"]["function"]
    assert scope["type"] == "resource_group" and scope["parameters"]["resource_group_name"]["operator"][
        "operands"]["false_value"] == "iotHubResourceGroup"  # fmt: skip
    assert module_body("iotHub")["params"]["name"] == "iotHubName"
    hub = template("modules/iothub.bicep")["resources"]["hub"]
    assert (hub["type"], hub["existing"]) == ("Microsoft.Devices/IotHubs", True)
    [grant] = resources_of_type("modules/iothub.bicep", "Microsoft.Authorization/roleAssignments").values()
    assert grant["scope"] == "hub" and grant["properties"]["principalType"] == "ServicePrincipal"
    assert accessed(app_settings()["IOTHUB_HOSTNAME"]) == "iotHub.outputs.hostName"
    output = template("modules/iothub.bicep")["outputs"]["hostName"]["value"]
    assert accessed(output) == "hub.properties.hostName"
    assert "IOTHUB_CONNECTION" not in app_settings()  # the secret stays a manual choice


# --- app settings against what the code reads ---------------------------------------------------------


def test_every_setting_the_code_reads_is_set_by_the_template_or_documented_as_manual() -> None:
    set_by_template = set(app_settings())
    manual = documented_manual_settings()
    connections = binding_settings()["connections"]
    unexplained = {name for name in settings_the_code_reads() - set_by_template - manual
                   if not any(s.startswith(f"{name}__") for s in set_by_template)}  # fmt: skip
    assert not unexplained, f"set these in infra/main.bicep or list them in README: {sorted(unexplained)}"
    for connection in connections:  # identity-based: the host reads <connection>__... settings
        assert any(name.startswith(f"{connection}__") for name in set_by_template), connection
    assert manual.isdisjoint(set_by_template), "a documented manual setting is set by the template after all"


def test_every_setting_the_template_sets_is_read_by_someone() -> None:
    read = settings_the_code_reads() | binding_settings()["referenced"]
    connections = binding_settings()["connections"]
    for name in app_settings():
        prefix = name.split("__", 1)[0]
        assert name in read or name in READ_BY_THE_PLATFORM or ("__" in name and prefix in connections), name


def test_the_code_scan_finds_the_settings_it_should() -> None:
    """The scan is the test's eyes: it must see settings.py's, services.py's and the bindings' names."""
    found = settings_the_code_reads()
    assert {
        "SCORING_URI",
        "HEAD_UNIT_SIGNING_KEY",
        "RETRAIN_SCHEDULE",
        "BATTERY_WORK_DIR",
        "MLFLOW_TRACKING_URI",
        "AZUREML_WORKSPACE",
        "EVENTHUB_CONSUMER_GROUP",
        "SCORING_AUTH",
    } <= found
    assert binding_settings()["connections"] == {"AzureWebJobsStorage", "EventHubConnection"}


def deployed_environment() -> dict[str, str]:
    """The template's app settings as the app would see them: literals as written, and for each expression a
    value of the shape Azure gives it."""
    shaped = {
        "AzureWebJobsStorage__blobServiceUri": "https://stexample.blob.core.windows.net/",
        "AzureWebJobsStorage__queueServiceUri": "https://stexample.queue.core.windows.net/",
        "AzureWebJobsStorage__tableServiceUri": "https://stexample.table.core.windows.net/",
        "AzureWebJobsStorage__credential": "managedidentity",
        "EventHubConnection__fullyQualifiedNamespace": "evhns-example.servicebus.windows.net",
        "EventHubConnection__credential": "managedidentity",
        "SCORING_AUTH": "aad_token",
        "SCORING_URI": "https://battery-cycles.westeurope.inference.ml.azure.com/score",
        "HEAD_UNIT_GATEWAY_URL": "https://headunits.example",
        "HEAD_UNIT_SIGNING_KEY": "resolved-from-key-vault",
        "SERVICE_BOOKING_URL": "https://service.example/book",
        "AZUREML_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
        "AZUREML_RESOURCE_GROUP": "rg-example",
        "AZUREML_WORKSPACE": "mlw-example",
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000",
        "IOTHUB_HOSTNAME": "trey-hub.azure-devices.net",
    }
    environment = {}
    for name, value in app_settings().items():
        if name == "SCORING_KEY":
            continue  # the key-auth branch; SCORING_AUTH=aad_token is the default
        environment[name] = literal(value) or shaped.get(name) or "00000000-0000-0000-0000-0000000000c1"
    return environment


def test_the_templates_settings_build_the_apps_services_keyless(tmp_path: Path) -> None:
    """build_services on the template's settings: identity-based storage on the account's endpoints as the
    user-assigned identity, and a scoring client that presents an Entra ID token. Nothing is sent."""
    from shared.adapters.eventhubs import producer_client
    from shared.adapters.iothub import hub_access
    from shared.adapters.storage import IdentityConnection, app_storage_connection
    from shared.bootstrap import build_services

    environment = {**deployed_environment(), "BATTERY_WORK_DIR": str(tmp_path)}
    services = build_services(environment)
    assert services.blobs.url.startswith("https://stexample.blob.core.windows.net")
    assert services.tables.url.startswith("https://stexample.table.core.windows.net")
    for service in ("blob", "queue", "table"):
        connection = app_storage_connection(service, environment)
        assert isinstance(connection, IdentityConnection)
        assert connection.client_id == environment["AzureWebJobsStorage__clientId"]
    assert "auth=azure-ad" in repr(services.scoring)
    assert services.settings.retrain_schedule == "0 0 2 * * *" and services.settings.azureml_configured
    settings = services.settings  # the iothub channel: the app identity's bearer token, no connection string
    hub = hub_access(settings.iothub_connection, settings.iothub_hostname, services.iothub_credential)
    assert hub is not None and (hub.host, hub.token_type) == ("trey-hub.azure-devices.net", b"bearer")
    with producer_client(None, environ=environment) as producer:
        assert producer._address.hostname == "evhns-example.servicebus.windows.net"


# --- alert rules and the telemetry they expect --------------------------------------------------------


def test_alert_rules_query_the_instruments_telemetry_json_names() -> None:
    telemetry = json.loads((INFRA / "telemetry.json").read_text())
    text = (INFRA / "modules" / "alerts.bicep").read_text()
    rules = resources_of_type("modules/alerts.bicep", "Microsoft.Insights/scheduledQueryRules")
    assert {body["name"] for body in rules.values()} == {
        "maintenance-alerts-poisoned", "telemetry-dead-lettered-per-hour", "telemetry-consumer-lag",
        "nightly-job-failures", "scoring-endpoint-failures"}  # fmt: skip
    for key in ("alertsPoisoned", "eventsDeadLettered", "eventsLagSeconds", "endpointLatency"):
        assert f"${{telemetry.{key}}}" in text, key
    timers = {name for name, bindings in function_bindings().items()
              if any(binding["type"] == "timerTrigger" for binding in bindings)}  # fmt: skip
    assert set(telemetry["nightlyFunctions"]) == {name for name in timers if name.startswith("nightly_")}
    assert all(value.startswith("battery.") for key, value in telemetry.items() if key != "nightlyFunctions")
    stalled = resource("modules/alerts.bicep", "consumerStalled")["properties"]["criteria"]["allOf"]
    assert [c["metricName"] for c in stalled] == ["IncomingMessages", "OutgoingMessages"]


def test_readme_names_every_instrument_the_alert_rules_need() -> None:
    readme = (ROOT / "README.md").read_text()
    telemetry = json.loads((INFRA / "telemetry.json").read_text())
    for key, name in telemetry.items():
        if key != "nightlyFunctions":
            assert f"`{name}`" in readme, name


# --- host.json ----------------------------------------------------------------------------------------


def test_host_json_fits_flex_consumption_and_batches_events() -> None:
    from shared.config.host import parse_timespan

    host = json.loads((ROOT / "host.json").read_text())
    timeout = parse_timespan(host["functionTimeout"], "functionTimeout")
    # Flex: 30 minutes by default, no enforced maximum, but up to 60 minutes of grace when scaling in.
    assert 30 * 60 <= timeout.total_seconds() <= 60 * 60
    hubs = host["extensions"]["eventHubs"]
    if "maxWaitTime" in hubs:  # the host ignores it unless minEventBatchSize > 1
        assert 1 < hubs["minEventBatchSize"] < hubs["maxEventBatchSize"]
        assert parse_timespan(hubs["maxWaitTime"], "maxWaitTime").total_seconds() <= 600


# --- azd, CI and the devcontainer ---------------------------------------------------------------------


def test_azure_yaml_deploys_this_folder_to_the_tagged_function_app() -> None:
    azure = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert azure["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert azure["services"] == {"api": {"project": ".", "language": "python", "host": "function"}}
    site = resources_of_type("modules/functionapp.bicep", "Microsoft.Web/sites")["app"]
    assert site["tags"]["function"]["parameters"]["arg_2"] == {"'azd-service-name'": "api"}  # pycep keeps quotes
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(parameters) <= set(template("main.bicep")["parameters"])


def workflow(name: str) -> dict:
    document = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    document["on"] = document.pop(True)  # YAML 1.1 reads the key `on` as True
    return document


def test_ci_runs_make_test_on_push_and_pull_request() -> None:
    ci = workflow("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    steps = [step.get("run", "") for job in ci["jobs"].values() for step in job["steps"]]
    assert any(run.strip() == "make test" for run in steps)
    assert all(job["timeout-minutes"] <= 30 for job in ci["jobs"].values())


def test_deploy_is_manual_and_signs_in_with_oidc() -> None:
    deploy = workflow("deploy.yml")
    assert set(deploy["on"]) == {"workflow_dispatch"}
    assert deploy["permissions"]["id-token"] == "write"
    steps = [step for job in deploy["jobs"].values() for step in job["steps"]]
    login = next(step for step in steps if step.get("uses", "").startswith("azure/login@"))
    assert set(login["with"]) >= {"client-id", "tenant-id", "subscription-id"} and "creds" not in login["with"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "azd provision" in runs and "azd deploy" in runs and "--federated-credential-provider" in runs


def test_devcontainer_has_python_3_11_node_20_azurite_and_core_tools() -> None:
    text = (ROOT / ".devcontainer" / "devcontainer.json").read_text()
    container = json.loads(text)
    assert "python:1-3.11" in container["image"]
    features = container["features"]
    assert features["ghcr.io/devcontainers/features/node:1"]["version"] == "20"
    assert any("azure-functions-core-tools" in f for f in features)
    assert container["postCreateCommand"] == "make install"  # the venv, and Azurite from package.json
    assert "azurite" in json.loads((ROOT / "package.json").read_text())["devDependencies"]

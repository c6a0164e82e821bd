// azd entry point: one resource group per azd environment, so `azd down` removes everything it made.
// Modules per concern (identity, monitoring, storage, Event Hubs, Key Vault, Function App, alerts, Azure ML,
// an existing IoT Hub's role); each module grants the app identity the roles it needs on its own resources.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment: names the resource group and seeds every resource name.')
param environmentName string

@minLength(1)
@description('Region for every resource; it must offer Flex Consumption.')
@metadata({ azd: { type: 'location' } })
param location string

@description('Object id of whoever runs azd (AZURE_PRINCIPAL_ID): may send test telemetry, read blobs, set secrets. Empty: nobody.')
param principalId string = ''

@allowed(['User', 'ServicePrincipal'])
@description('User for a person; ServicePrincipal when a pipeline (the deploy workflow) runs azd.')
param principalType string = 'User'

@allowed([512, 2048, 4096])
@description('Memory of each Function App instance in MB.')
param instanceMemoryMB int = 2048

@minValue(40)
@maxValue(1000)
@description('Most instances the Function App scales out to.')
param maximumInstanceCount int = 40

@minValue(1)
@maxValue(32)
@description('Partitions of car-telemetry (fixed once created on Standard): the most instances that read it at once.')
param eventHubPartitionCount int = 4

@description('Capture every raw event to the telemetry-capture container (Avro), a replayable archive.')
param eventHubCaptureEnabled bool = false

@description('Create the Azure ML workspace, the auto-ml-compute cluster and the battery-cycles endpoint.')
param azureMlEnabled bool = false

@allowed(['aad_token', 'key'])
@description('How the app authenticates to the scoring endpoint: its identity\'s token, or a key (secret scoring-key).')
param scoringAuthMode string = 'aad_token'

@description('Scoring endpoint when azureMlEnabled is false (an endpoint deployed elsewhere); empty: none yet.')
param scoringUri string = ''

@description('The head-unit gateway the app pushes alerts to.')
param headUnitGatewayUrl string

@secure()
@description('HMAC key alerts are signed with (stored in Key Vault; the gateway holds the same key).')
param headUnitSigningKey string

@description('The "schedule service" link in alerts.')
param serviceBookingUrl string = 'https://service.treyresearch.example/book'

@description('Where alert rules mail; empty: the rules fire in the portal only.')
param alertEmail string = ''

@description('Key Vault purge protection (on for production; off lets azd down --purge free the name).')
param keyVaultPurgeProtection bool = false

@description('Name of an existing IoT Hub for the iothub alert channel: the app identity gets IoT Hub Data Contributor on it and IOTHUB_HOSTNAME names it. Empty: none.')
param iotHubName string = ''

@description('Resource group of that IoT Hub; empty: the environment\'s own.')
param iotHubResourceGroup string = ''

var abbreviation = 'battery'
var token = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  application: 'battery-alerting'
}
var names = {
  resourceGroup: 'rg-${environmentName}'
  identity: 'id-${abbreviation}-${token}'
  logAnalytics: 'log-${abbreviation}-${token}'
  applicationInsights: 'appi-${abbreviation}-${token}'
  storage: 'st${token}'
  eventHubs: 'evhns-${abbreviation}-${token}'
  keyVault: 'kv-${take(token, 13)}'
  plan: 'plan-${abbreviation}-${token}'
  functionApp: 'func-${abbreviation}-${token}'
  mlWorkspace: 'mlw-${abbreviation}-${token}'
  mlStorage: 'stml${take(token, 13)}'
}

// What the code names (shared/*.py): hub, queue, tables and containers the app reads and writes.
var eventHubName = 'car-telemetry'
var consumerGroupName = 'battery-alerting'
var alertQueue = 'maintenance-alerts'
var deploymentContainer = 'app-package'
var captureContainer = 'telemetry-capture'
var appContainers = [
  'telemetry'
  'deadletter'
  'parked'
  'scores'
  'models'
  'compliance'
  'compliance-models'
  'components'
  'monitoring'
]
var appTables = [
  'alerts'
  'batterystate'
  'cars'
  'alertlabels'
]

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: names.resourceGroup
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: names.identity
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: names.logAnalytics
    applicationInsightsName: names.applicationInsights
    location: location
    tags: tags
    publisherPrincipalIds: [identity.outputs.principalId]
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: names.storage
    location: location
    tags: tags
    containers: concat(appContainers, [deploymentContainer, captureContainer])
    queues: [alertQueue, '${alertQueue}-poison']
    tables: appTables
    appPrincipalId: identity.outputs.principalId
    readerPrincipalId: principalId
    readerPrincipalType: principalType
  }
}

module eventHubs 'modules/eventhubs.bicep' = {
  name: 'eventhubs'
  scope: rg
  params: {
    namespaceName: names.eventHubs
    location: location
    tags: tags
    eventHubName: eventHubName
    partitionCount: eventHubPartitionCount
    consumerGroupName: consumerGroupName
    captureEnabled: eventHubCaptureEnabled
    captureStorageAccountId: storage.outputs.id
    captureContainer: captureContainer
    appIdentityId: identity.outputs.id
    appPrincipalId: identity.outputs.principalId
    senderPrincipalId: principalId
    senderPrincipalType: principalType
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: names.keyVault
    location: location
    tags: tags
    headUnitSigningKey: headUnitSigningKey
    purgeProtection: keyVaultPurgeProtection
    appPrincipalId: identity.outputs.principalId
    officerPrincipalId: principalId
    officerPrincipalType: principalType
  }
}

module azureMl 'modules/azureml.bicep' = if (azureMlEnabled) {
  name: 'azureml'
  scope: rg
  params: {
    workspaceName: names.mlWorkspace
    storageAccountName: names.mlStorage
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    keyVaultId: keyVault.outputs.id
    computeName: 'auto-ml-compute'
    computeSize: 'STANDARD_DS3_v2'
    endpointName: 'battery-cycles'
    endpointAuthMode: scoringAuthMode
    appPrincipalId: identity.outputs.principalId
  }
}

module iotHub 'modules/iothub.bicep' = if (!empty(iotHubName)) {
  name: 'iothub'
  scope: resourceGroup(empty(iotHubResourceGroup) ? rg.name : iotHubResourceGroup)
  params: {
    name: iotHubName
    appPrincipalId: identity.outputs.principalId
  }
}

var identitySettings = {
  credential: 'managedidentity'
  clientId: identity.outputs.clientId
}
// Identity-based connections (no keys): AzureWebJobsStorage__*, EventHubConnection__*.
var connectionSettings = {
  AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
  AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
  AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
  AzureWebJobsStorage__credential: identitySettings.credential
  AzureWebJobsStorage__clientId: identitySettings.clientId
  EventHubConnection__fullyQualifiedNamespace: eventHubs.outputs.fullyQualifiedNamespace
  EventHubConnection__credential: identitySettings.credential
  EventHubConnection__clientId: identitySettings.clientId
  EVENTHUB_CONSUMER_GROUP: consumerGroupName
  // DefaultAzureCredential (scoring token, Azure ML client) picks the user-assigned identity from this.
  AZURE_CLIENT_ID: identitySettings.clientId
}
var monitoringSettings = {
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identitySettings.clientId};Authorization=AAD'
}
var resolvedScoringUri = azureMlEnabled ? azureMl.outputs.scoringUri : scoringUri
var scoringUriSettings = empty(resolvedScoringUri) ? {} : { SCORING_URI: resolvedScoringUri }
var scoringKeySettings = (scoringAuthMode == 'key') ? { SCORING_KEY: '@Microsoft.KeyVault(VaultName=${names.keyVault};SecretName=scoring-key)' } : {}
var scoringSettings = union({ SCORING_AUTH: scoringAuthMode }, scoringUriSettings, scoringKeySettings)
var alertSettings = {
  HEAD_UNIT_GATEWAY_URL: headUnitGatewayUrl
  HEAD_UNIT_SIGNING_KEY: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.signingKeySecretUri})'
  SERVICE_BOOKING_URL: serviceBookingUrl
  ALERT_PROBABILITY_THRESHOLD: '0.8'
  ALERT_COOLDOWN_DAYS: '7'
  FEEDBACK_BOOKING_GRACE_DAYS: '14'
  ALERT_EXPIRY_HOURS: '24'
  QUIET_HOURS: '22:00-07:00'
}
// The iothub channel signs in as the app identity (no IOTHUB_CONNECTION secret) when an IoT Hub is named.
var iotHubSettings = empty(iotHubName) ? {} : { IOTHUB_HOSTNAME: iotHub.outputs.hostName }
var jobSettings = {
  RETRAIN_SCHEDULE: '0 0 2 * * *'
  BATCH_SCORE_SCHEDULE: '0 0 3 * * *'
  COMPLIANCE_SCHEDULE: '0 30 3 * * *'
  COMPACTION_SCHEDULE: '0 0 1 * * *'
  MONITOR_SCHEDULE: '0 0 4 * * *'
  MONITOR_PSI_THRESHOLD: '0.2'
  MONITOR_DEGRADATION_MARGIN: '0.25'
  MONITOR_RETRAIN_COOLDOWN_DAYS: '40'
  KEEP_SHADOW_CANDIDATE: 'true'
  ARCHIVE_SKIP_UNREADABLE: 'false'
  BATCH_SCORE_CHUNK_BATTERIES: '5000'
  COMPONENT_CATALOG_BLOB: 'components/catalog.csv'
  // The deployed package is read-only; training runs are tracked on the instance's /tmp (lost on recycle).
  MLFLOW_TRACKING_URI: 'sqlite:////tmp/mlflow.db'
}
var azureMlSettings = azureMlEnabled ? {
  AZUREML_SUBSCRIPTION_ID: subscription().subscriptionId
  AZUREML_RESOURCE_GROUP: rg.name
  AZUREML_WORKSPACE: names.mlWorkspace
} : {}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    planName: names.plan
    appName: names.functionApp
    location: location
    tags: tags
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    identityId: identity.outputs.id
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainer: deploymentContainer
    appSettings: union(connectionSettings, monitoringSettings, scoringSettings, alertSettings, iotHubSettings, jobSettings, azureMlSettings)
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    eventHubNamespaceId: eventHubs.outputs.id
    eventHubName: eventHubName
    alertEmail: alertEmail
    deadLetteredPerHour: 10
    maxLagSeconds: 600
  }
}

// azd writes these to .azure/<env>/.env; the README's send-telemetry step reads EventHubConnection__*.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output SERVICE_API_NAME string = functionApp.outputs.name
output SERVICE_API_URI string = functionApp.outputs.url
output EventHubConnection__fullyQualifiedNamespace string = eventHubs.outputs.fullyQualifiedNamespace
output AZURE_STORAGE_BLOB_ENDPOINT string = storage.outputs.blobEndpoint
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output SCORING_URI string = resolvedScoringUri
output AZUREML_WORKSPACE string = azureMlEnabled ? names.mlWorkspace : ''
output ALERT_RULES array = alerts.outputs.ruleNames

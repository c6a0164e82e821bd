// Event Hubs: the namespace (Standard: consumer groups and Capture need it; SAS keys disabled), the hub the
// cars send to, the app's consumer group, and optionally Capture of every event to Blob storage as Avro.

param namespaceName string
param location string
param tags object
param eventHubName string
@minValue(1)
@maxValue(32)
param partitionCount int
@minValue(1)
@maxValue(7)
param messageRetentionInDays int = 1
param consumerGroupName string
@description('Capture the raw events to captureContainer (Avro, every 5 minutes or 100 MB) as the app identity.')
param captureEnabled bool
param captureStorageAccountId string
param captureContainer string
@description('The app identity: receives events (trigger); Capture writes as it too.')
param appIdentityId string
param appPrincipalId string
@description('A person (AZURE_PRINCIPAL_ID) who sends test telemetry; empty for none.')
param senderPrincipalId string = ''
param senderPrincipalType string = 'User'

var roles = loadJsonContent('../roles.json')

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
    capacity: 1
  }
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${appIdentityId}': {}
    }
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
    isAutoInflateEnabled: false
  }
}

resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: namespace
  name: eventHubName
  properties: {
    partitionCount: partitionCount
    messageRetentionInDays: messageRetentionInDays
    captureDescription: captureEnabled ? {
      enabled: true
      encoding: 'Avro'
      intervalInSeconds: 300
      sizeLimitInBytes: 104857600
      skipEmptyArchives: true
      destination: {
        name: 'EventHubArchive.AzureBlockBlob'
        identity: {
          type: 'UserAssigned'
          userAssignedIdentity: appIdentityId
        }
        properties: {
          storageAccountResourceId: captureStorageAccountId
          blobContainer: captureContainer
          archiveNameFormat: '{Namespace}/{EventHub}/{PartitionId}/{Year}/{Month}/{Day}/{Hour}/{Minute}/{Second}'
        }
      }
    } : null
  }
}

resource consumerGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: hub
  name: consumerGroupName
  properties: {
    userMetadata: 'The battery-alerting Function App (score_telemetry).'
  }
}

resource receiverRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hub.id, appPrincipalId, roles.EventHubsDataReceiver)
  scope: hub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.EventHubsDataReceiver)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource senderRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(senderPrincipalId)) {
  name: guid(hub.id, senderPrincipalId, roles.EventHubsDataSender)
  scope: hub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.EventHubsDataSender)
    principalId: senderPrincipalId
    principalType: senderPrincipalType
  }
}

output id string = namespace.id
output name string = namespace.name
output fullyQualifiedNamespace string = '${namespace.name}.servicebus.windows.net'
output eventHubName string = hub.name
output consumerGroupName string = consumerGroup.name

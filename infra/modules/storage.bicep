// The app's storage account: host storage (AzureWebJobsStorage), the deployment package, and the app's own
// containers, queues and tables. Keys are disabled: every client (host, app, Event Hubs Capture) uses Entra ID.

param name string
param location string
param tags object
@description('Blob containers: the app\'s, the deployment package\'s and the capture archive\'s.')
param containers array
param queues array
param tables array
@description('The app identity: Blob Data Owner (host storage), Queue and Table Data Contributor.')
param appPrincipalId string
@description('A person (AZURE_PRINCIPAL_ID) who reads results and dead letters; empty for none.')
param readerPrincipalId string = ''
param readerPrincipalType string = 'User'

var roles = loadJsonContent('../roles.json')
var appRoles = [roles.StorageBlobDataOwner, roles.StorageQueueDataContributor, roles.StorageTableDataContributor]

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Flex Consumption without a virtual network reaches storage on its public endpoint; access needs an Entra ID token (shared keys are off)
  // checkov:skip=CKV_AZURE_59: same reason as CKV_AZURE_35: public network access with identity-only auth
  // checkov:skip=CKV_AZURE_206: LRS is enough for a rebuildable demo; raise skuName to Standard_ZRS/GRS for production
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource blobContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for container in containers: {
  parent: blobService
  name: container
  properties: {
    publicAccess: 'None'
  }
}]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource storageQueues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queue in queues: {
  parent: queueService
  name: queue
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource storageTables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in tables: {
  parent: tableService
  name: table
}]

resource appRoleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in appRoles: {
  name: guid(account.id, appPrincipalId, role)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}]

resource readerRoleAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(readerPrincipalId)) {
  name: guid(account.id, readerPrincipalId, roles.StorageBlobDataReader)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.StorageBlobDataReader)
    principalId: readerPrincipalId
    principalType: readerPrincipalType
  }
}

output id string = account.id
output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output tableEndpoint string = account.properties.primaryEndpoints.table
